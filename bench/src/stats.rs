//! Medians and spreads of repeated measurements.

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(xs: &[f64]) -> Summary {
    let median = blobvirt_core::stats::median(xs).unwrap_or(f64::NAN);
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Summary { median, min, max }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} ({:.3}–{:.3})", self.median, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_odd_even() {
        assert_eq!(super::summarize(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(super::summarize(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
