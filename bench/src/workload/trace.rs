//! The read-trace file format shared by the synthetic boot set (`gen-trace`)
//! and traces recorded by mirrord: text, `#` comment lines (a comment may carry
//! `image_size=BYTES`), every other line `OFFSET LENGTH` in decimal bytes, one
//! read request per line in issue order.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};

/// A parsed trace: the reads `(offset, length)` in issue order and the image
/// size from an `image_size=` header comment, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trace {
    pub reads: Vec<(u64, u64)>,
    pub image_size: Option<u64>,
}

impl Trace {
    /// Sum of all read lengths (bytes a replay reads, repeats included).
    pub fn total_bytes(&self) -> u64 {
        self.reads.iter().map(|r| r.1).sum()
    }
}

/// Parses trace text; empty lines are skipped, a malformed line is an error
/// naming its line number.
pub fn parse_trace(text: &str) -> Result<Trace> {
    let mut t = Trace::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            for word in comment.split_whitespace() {
                if let Some(v) = word.strip_prefix("image_size=") {
                    let size = v
                        .parse()
                        .with_context(|| format!("trace line {}: bad image_size {v:?}", i + 1))?;
                    t.image_size = Some(size);
                }
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(off), Some(len), None) = (words.next(), words.next(), words.next()) else {
            bail!(
                "trace line {} is {line:?}, not `OFFSET LENGTH`; fix or drop that line",
                i + 1
            );
        };
        let parse = |w: &str| -> Result<u64> {
            w.parse().with_context(|| {
                format!(
                    "trace line {} has {w:?} where a decimal byte count belongs",
                    i + 1
                )
            })
        };
        let (off, len) = (parse(off)?, parse(len)?);
        if len == 0 {
            bail!("trace line {} reads 0 bytes; drop that line", i + 1);
        }
        off.checked_add(len)
            .with_context(|| format!("trace line {} reads past 2^64 bytes", i + 1))?;
        t.reads.push((off, len));
    }
    Ok(t)
}

/// Bytes covered by the union of the reads (overlaps counted once).
pub fn unique_bytes(reads: &[(u64, u64)]) -> u64 {
    let mut v: Vec<(u64, u64)> = reads.iter().map(|&(o, l)| (o, o + l)).collect();
    v.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(u64, u64)> = None;
    for (s, e) in v {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            _ => {
                if let Some((cs, ce)) = cur {
                    total += ce - cs;
                }
                cur = Some((s, e));
            }
        }
    }
    total + cur.map_or(0, |(s, e)| e - s)
}

/// Renders a trace: the header comment lines (without `#`) then the reads.
pub fn render(header: &[String], reads: &[(u64, u64)]) -> String {
    let mut s = String::with_capacity(reads.len() * 20 + 100);
    for h in header {
        let _ = writeln!(s, "# {h}");
    }
    for (o, l) in reads {
        let _ = writeln!(s, "{o} {l}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_header_and_reads() {
        let t = parse_trace(
            "# image_size=1048576\n# unique_bytes=10 source=x\n\n0 4096\n  8192 512 \n0 100\n",
        )
        .unwrap();
        assert_eq!(t.image_size, Some(1 << 20));
        assert_eq!(t.reads, vec![(0, 4096), (8192, 512), (0, 100)]);
        assert_eq!(t.total_bytes(), 4096 + 512 + 100);
        assert_eq!(parse_trace("1 2\n").unwrap().image_size, None);
    }

    #[test]
    fn rejects_malformed_lines_with_line_number() {
        for bad in ["0\n", "0 1 2\n", "x 1\n", "0 -1\n", "0 0\n"] {
            let e = parse_trace(&format!("# c\n{bad}")).unwrap_err();
            assert!(format!("{e:#}").contains("line 2"), "{bad:?}: {e:#}");
        }
    }

    #[test]
    fn unique_bytes_merges_overlaps() {
        assert_eq!(unique_bytes(&[]), 0);
        assert_eq!(unique_bytes(&[(0, 10)]), 10);
        assert_eq!(unique_bytes(&[(0, 10), (5, 10)]), 15);
        assert_eq!(unique_bytes(&[(20, 5), (0, 10), (10, 5)]), 20);
        assert_eq!(unique_bytes(&[(0, 100), (10, 5), (0, 100)]), 100);
        assert_eq!(unique_bytes(&[(0, 1), (2, 1)]), 2);
    }

    #[test]
    fn render_round_trips() {
        let reads = vec![(4096, 131072), (0, 4096)];
        let text = render(&["image_size=65536".into()], &reads);
        let t = parse_trace(&text).unwrap();
        assert_eq!(t.reads, reads);
        assert_eq!(t.image_size, Some(65536));
    }
}
