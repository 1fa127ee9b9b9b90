//! The per-node model: how long a phase would take if every emulated node
//! had this machine's 2 cores and a disk of its own, from what each node
//! used in the emulation (see [`super::acct`] for how that is counted).
//!
//! A node's CPU time is the CPU time of its processes plus its share of the
//! "switch": the machine's CPU time in the phase (`/proc/stat`) minus that
//! of every process (the nodes', the harness's own, and other processes on
//! the machine, e.g. a build), divided evenly over the N + 1 nodes (the
//! server is a node). What is left is the kernel's work outside the nodes'
//! processes: veth, bridge and `tc` in kernel threads (ksoftirqd, kworkers)
//! and in softirqs that interrupted an idle CPU, the flusher, the journal.
//! (Softirqs that interrupt a node's process are charged to that process
//! by this kernel: it has no `CONFIG_IRQ_TIME_ACCOUNTING`.) Other processes
//! are sampled from `/proc` ([`super::sample::others`]); those that start
//! and end inside a phase can be missed, and then count as switch. The
//! switch is never taken below the kernel threads' own CPU time, which is
//! measured directly. On a machine that runs nothing else, "other
//! processes" is about 0 and the switch is simply the machine's time minus
//! the nodes' and the harness's.
//!
//! A node's model time is `max(link, CPU / 2, disk bytes / disk bandwidth)`:
//! `link` is the larger of the bytes it sent and received over its link
//! divided by the link rate, CPU is its CPU-seconds over its 2 cores, the
//! disk term its read plus written bytes over the disk bandwidth. The model
//! time of the phase is the largest over all nodes: the phase ends when its
//! last node is done. It assumes each resource is used at full rate and
//! the three overlap perfectly, so it is an optimistic estimate for a real
//! cluster with the same resources, not a prediction.

use serde_json::{json, Value};

/// Cores each node would have of its own.
pub const MODEL_CORES: f64 = 2.0;
/// How the model is labelled in tables and plots.
pub const LABEL: &str = "model: own 2 cores + own disk per node";

/// Rates of the resources a node would own.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Link rate, bytes per second (each direction).
    pub link_bps: f64,
    /// Disk bandwidth, bytes per second (reads and writes alike).
    pub disk_bps: f64,
    pub cores: f64,
}

/// What one node used during a phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeUse {
    pub name: String,
    /// CPU-seconds of its processes (user + system).
    pub cpu_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Bytes it sent into its link and received from it.
    pub sent_bytes: u64,
    pub recv_bytes: u64,
}

/// The model of one node in a phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeModel {
    pub link_s: f64,
    /// Its processes' CPU-seconds plus its share of the switch.
    pub cpu_s: f64,
    pub cpu_bound_s: f64,
    pub disk_s: f64,
    pub model_s: f64,
    /// Which term is the largest: "link", "cpu" or "disk".
    pub bound: &'static str,
}

/// The machine's CPU-seconds in a phase and the part of it no node used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Machine {
    /// All CPUs: user, nice, system, irq, softirq.
    pub cpu_s: f64,
    /// The harness process itself.
    pub harness_s: f64,
    /// Processes outside the harness's cgroups (not kernel threads).
    pub others_s: f64,
    /// Kernel threads (part of the switch; for the record).
    pub kthreads_s: f64,
}

/// The machine's CPU time that no process accounts for: neither a node's,
/// the harness's nor another one's; never less than what the kernel
/// threads used, which is measured directly (the difference can fall below
/// it when other processes are busy: their time is sampled by the tick and
/// may include a reaped child's time from before the phase).
pub fn switch_cpu_s(m: &Machine, procs_s: f64) -> f64 {
    (m.cpu_s - procs_s - m.harness_s - m.others_s)
        .max(m.kthreads_s)
        .max(0.0)
}

/// The other processes' CPU time as far as the machine's time leaves room
/// for it next to the nodes, the harness and the switch (so the parts add
/// up to the machine's time).
pub fn others_within(m: &Machine, procs_s: f64) -> f64 {
    m.others_s
        .min(m.cpu_s - procs_s - m.harness_s - switch_cpu_s(m, procs_s))
        .max(0.0)
}

/// Model time of one node that used `u` and `share_s` of the switch.
pub fn node_model(u: &NodeUse, share_s: f64, p: &Params) -> NodeModel {
    let link_s = u.sent_bytes.max(u.recv_bytes) as f64 / p.link_bps;
    let cpu_s = u.cpu_s + share_s;
    let cpu_bound_s = cpu_s / p.cores;
    let disk_s = (u.read_bytes + u.write_bytes) as f64 / p.disk_bps;
    let (mut model_s, mut bound) = (link_s, "link");
    for (t, b) in [(cpu_bound_s, "cpu"), (disk_s, "disk")] {
        if t > model_s {
            (model_s, bound) = (t, b);
        }
    }
    NodeModel {
        link_s,
        cpu_s,
        cpu_bound_s,
        disk_s,
        model_s,
        bound,
    }
}

/// Every node of a phase with its model.
#[derive(Clone, Debug)]
pub struct PhaseModel {
    pub nodes: Vec<(NodeUse, NodeModel)>,
    /// As measured; `others_within` is the part that fits.
    pub machine: Machine,
    pub others_within_s: f64,
    pub procs_cpu_s: f64,
    pub switch_cpu_s: f64,
    pub share_s: f64,
}

impl PhaseModel {
    pub fn new(nodes: Vec<NodeUse>, machine: Machine, p: &Params) -> Self {
        let procs_cpu_s: f64 = nodes.iter().map(|n| n.cpu_s).sum();
        let switch = switch_cpu_s(&machine, procs_cpu_s);
        let others_within_s = others_within(&machine, procs_cpu_s);
        let share_s = switch / nodes.len().max(1) as f64;
        PhaseModel {
            nodes: nodes
                .into_iter()
                .map(|u| {
                    let m = node_model(&u, share_s, p);
                    (u, m)
                })
                .collect(),
            machine,
            others_within_s,
            procs_cpu_s,
            switch_cpu_s: switch,
            share_s,
        }
    }

    /// The node that finishes last in the model.
    pub fn slowest(&self) -> Option<&(NodeUse, NodeModel)> {
        self.nodes
            .iter()
            .max_by(|a, b| a.1.model_s.total_cmp(&b.1.model_s))
    }

    /// Model time of the phase: the last node's.
    pub fn model_s(&self) -> f64 {
        self.slowest().map_or(0.0, |n| n.1.model_s)
    }

    pub fn max_cpu_s(&self) -> f64 {
        self.nodes.iter().map(|n| n.1.cpu_s).fold(0.0, f64::max)
    }

    pub fn max_disk_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.0.read_bytes + n.0.write_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The record's `model` object; `machine_disk_bytes` (read + written
    /// on the work directory's disk) gives the bytes no node was charged.
    pub fn summary_json(&self, machine_disk_bytes: u64) -> Value {
        let slow = self.slowest();
        let nodes_disk: u64 = self
            .nodes
            .iter()
            .map(|n| n.0.read_bytes + n.0.write_bytes)
            .sum();
        json!({
            "s": self.model_s(),
            "node": slow.map(|n| n.0.name.clone()),
            "bound": slow.map(|n| n.1.bound),
            "max_node_cpu_s": self.max_cpu_s(),
            "max_node_disk_bytes": self.max_disk_bytes(),
            "machine_cpu_s": self.machine.cpu_s,
            "procs_cpu_s": self.procs_cpu_s,
            "harness_cpu_s": self.machine.harness_s,
            "other_procs_cpu_s": self.others_within_s,
            "other_procs_sampled_cpu_s": self.machine.others_s,
            "kthreads_cpu_s": self.machine.kthreads_s,
            "switch_cpu_s": self.switch_cpu_s,
            "switch_share_s": self.share_s,
            "machine_disk_bytes": machine_disk_bytes,
            "unattributed_disk_bytes": machine_disk_bytes.saturating_sub(nodes_disk),
        })
    }

    /// The record's `per_node` array (server first).
    pub fn nodes_json(&self) -> Value {
        Value::Array(
            self.nodes
                .iter()
                .map(|(u, m)| {
                    json!({
                        "node": u.name,
                        "cpu_s": u.cpu_s,
                        "user_s": u.user_s,
                        "sys_s": u.sys_s,
                        "cpu_with_share_s": m.cpu_s,
                        "read_bytes": u.read_bytes,
                        "write_bytes": u.write_bytes,
                        "sent_bytes": u.sent_bytes,
                        "recv_bytes": u.recv_bytes,
                        "link_s": m.link_s,
                        "cpu_bound_s": m.cpu_bound_s,
                        "disk_s": m.disk_s,
                        "model_s": m.model_s,
                        "bound": m.bound,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    fn params() -> Params {
        Params {
            link_bps: 125.0 * MB,
            disk_bps: 500.0 * MB,
            cores: MODEL_CORES,
        }
    }

    fn node(name: &str, cpu_s: f64, disk: u64, sent: u64, recv: u64) -> NodeUse {
        NodeUse {
            name: name.into(),
            cpu_s,
            read_bytes: disk,
            sent_bytes: sent,
            recv_bytes: recv,
            ..Default::default()
        }
    }

    fn machine(cpu_s: f64, harness_s: f64, others_s: f64) -> Machine {
        Machine {
            cpu_s,
            harness_s,
            others_s,
            kthreads_s: 0.0,
        }
    }

    #[test]
    fn switch_share_is_what_no_process_used_over_every_node() {
        assert_eq!(switch_cpu_s(&machine(10.0, 1.0, 0.0), 6.0), 3.0);
        // Another process on the machine is not the switch.
        assert_eq!(switch_cpu_s(&machine(10.0, 1.0, 2.5), 6.0), 0.5);
        // Samples a few ms apart can make it slightly negative: never < 0,
        // and never below the kernel threads' time.
        assert_eq!(switch_cpu_s(&machine(5.0, 0.0, 0.0), 5.2), 0.0);
        let mut m = machine(5.0, 0.0, 1.0);
        m.kthreads_s = 0.25;
        assert_eq!(switch_cpu_s(&m, 4.5), 0.25);
        // Then the other processes get what is left, so the parts add up.
        assert_eq!(others_within(&m, 4.5), 0.25);
        assert_eq!(others_within(&machine(10.0, 1.0, 2.5), 6.0), 2.5);
        let nodes = vec![
            node("srv", 1.0, 0, 0, 0),
            node("n1", 2.0, 0, 0, 0),
            node("n2", 3.0, 0, 0, 0),
        ];
        let m = PhaseModel::new(nodes, machine(11.5, 0.5, 2.0), &params());
        assert_eq!(m.procs_cpu_s, 6.0);
        assert_eq!(m.switch_cpu_s, 3.0);
        assert_eq!(m.share_s, 1.0);
        // Every node's CPU is its processes' plus its share, and all of
        // them together with the harness and the others make the machine's.
        let cpus: Vec<f64> = m.nodes.iter().map(|n| n.1.cpu_s).collect();
        assert_eq!(cpus, vec![2.0, 3.0, 4.0]);
        let all = cpus.iter().sum::<f64>() + m.machine.harness_s + m.others_within_s;
        assert_eq!(all, m.machine.cpu_s);
    }

    #[test]
    fn a_node_takes_its_largest_term() {
        let p = params();
        // 250 MB received on a 125 MB/s link: 2 s; 2 CPU-s on 2 cores: 1 s.
        let m = node_model(&node("n1", 2.0, 0, 1000, 250_000_000), 0.0, &p);
        assert_eq!((m.link_s, m.cpu_bound_s, m.disk_s), (2.0, 1.0, 0.0));
        assert_eq!((m.model_s, m.bound), (2.0, "link"));
        // The switch share is part of the CPU term.
        let m = node_model(&node("n1", 2.0, 0, 0, 0), 4.0, &p);
        assert_eq!((m.cpu_s, m.model_s, m.bound), (6.0, 3.0, "cpu"));
        // Reads and writes both count against the disk.
        let mut u = node("srv", 0.0, 1000 * MB as u64, 0, 0);
        u.write_bytes = 500 * MB as u64;
        let m = node_model(&u, 0.0, &p);
        assert_eq!((m.disk_s, m.bound), (3.0, "disk"));
    }

    #[test]
    fn the_phase_ends_with_its_slowest_node() {
        // A server-bound system: the server sends every node's bytes.
        let b = 100_000_000;
        let nodes = vec![
            node("srv", 0.5, 200_000_000, 4 * b, 0),
            node("n1", 1.0, 0, 0, b),
            node("n2", 1.0, 0, 0, b),
            node("n3", 1.0, 0, 0, b),
            node("n4", 1.0, 0, 0, b),
        ];
        let m = PhaseModel::new(nodes, machine(5.0, 0.0, 0.0), &params());
        let s = m.slowest().unwrap();
        assert_eq!((s.0.name.as_str(), s.1.bound), ("srv", "link"));
        assert!((m.model_s() - 3.2).abs() < 1e-9);
        assert_eq!(m.max_disk_bytes(), 200_000_000);
        // 0.5 CPU-s of switch over 5 nodes: 0.1 each.
        assert!((m.max_cpu_s() - 1.1).abs() < 1e-9);
        let j = m.summary_json(250_000_000);
        assert_eq!(j["node"], "srv");
        assert_eq!(j["unattributed_disk_bytes"], 50_000_000);
        assert_eq!(m.nodes_json().as_array().unwrap().len(), 5);
    }
}
