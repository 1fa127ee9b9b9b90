//! The CPU fields of `/proc/PID/stat`, which the benches sample before and
//! after a step: one parser for the data-path suite and the emulated
//! harness.

/// Seconds per clock tick of `/proc/stat` and `/proc/PID/stat`: USER_HZ,
/// which Linux fixes at 100 on every architecture blobvirt runs on.
pub const TICK_S: f64 = 0.01;

/// CPU fields of one process, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 9: the kernel's per-process flags (PF_*).
    pub flags: u64,
    /// Fields 14 + 15: user + system time of the process (all threads).
    pub ticks: u64,
    /// Fields 16 + 17: user + system time of its waited-for children.
    pub child_ticks: u64,
    /// Field 22: when the process started, in ticks since boot.
    pub start: u64,
}

/// Parses the text of a `/proc/PID/stat` file. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after the
/// last `)`.
pub fn parse(s: &str) -> Option<ProcStat> {
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    // f[k] is field k + 3.
    let n = |field: usize| f.get(field - 3).and_then(|x| x.parse::<u64>().ok());
    Some(ProcStat {
        flags: n(9)?,
        ticks: n(14)? + n(15)?,
        child_ticks: n(16)? + n(17)?,
        start: n(22)?,
    })
}

/// `/proc/<pid>/stat` of a process (`pid` may be `self`); `None` when it
/// is gone.
pub fn read(pid: &str) -> Option<ProcStat> {
    parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_counted_after_the_command_name() {
        let s = "42 (a b) c) S 1 42 42 0 -1 4194560 10 0 0 0 7 3 5 6 20 0 1 0 999 0 0";
        let p = super::parse(s).unwrap();
        assert_eq!(
            p,
            super::ProcStat {
                flags: 4194560,
                ticks: 10,
                child_ticks: 11,
                start: 999
            }
        );
        assert!(super::parse("42 (x) S 1").is_none());
        assert!(super::read("self").unwrap().start > 0);
    }
}
