//! One timed phase (deployment, snapshot): every counter is sampled when
//! it begins and when it ends, and the differences become the phase's
//! record fields: link bytes, how busy the machine's CPUs and disk were,
//! and, per node, CPU-seconds, disk bytes and link bytes with the per-node
//! model ([`super::model`]).

use anyhow::Result;
use serde_json::{json, Value};

use super::acct::Counters;
use super::model::{Machine, NodeUse, PhaseModel};
use super::sample::{
    busy_since, cpu_jiffies, disk_sample, disk_since, machine_ticks, others, others_since,
    self_ticks, DiskSample, Others, TICK_S,
};
use super::Env;

/// The counters at the beginning of a phase.
pub struct Phase {
    sent: Vec<u64>,
    recv: Vec<u64>,
    jiffies: (u64, u64),
    machine: u64,
    harness: u64,
    disk: DiskSample,
    nodes: Option<Vec<Counters>>,
    others: Option<Others>,
}

/// What a phase used.
pub struct Used {
    pub traffic_bytes: u64,
    pub traffic_server_bytes: u64,
    pub cpu_busy: f64,
    pub disk_busy: f64,
    pub disk_written_bytes: u64,
    pub disk_read_bytes: u64,
    /// None when nodes are not accounted (no cgroup v1).
    pub model: Option<PhaseModel>,
}

fn diff(a: &[u64], b: &[u64]) -> Vec<u64> {
    b.iter().zip(a).map(|(y, x)| y.saturating_sub(*x)).collect()
}

impl Phase {
    pub fn begin(env: &Env) -> Result<Phase> {
        // Link counters first (`ip` runs), CPU counters last.
        Ok(Phase {
            sent: env.net.sent_bytes()?,
            recv: env.net.received_bytes()?,
            jiffies: cpu_jiffies(),
            machine: machine_ticks(),
            harness: self_ticks(),
            disk: disk_sample(&env.dir),
            nodes: env.acct.sample(),
            others: env.acct.parent().map(others),
        })
    }

    pub fn end(self, env: &Env) -> Result<Used> {
        // The nodes' and the machine's CPU counters first, together; then
        // the link counters (`ip` runs, outside every node, after the CPU
        // samples: it is no part of the phase) and the other processes.
        let nodes = env.acct.sample();
        let cpu_busy = busy_since(self.jiffies);
        let machine_s = machine_ticks().saturating_sub(self.machine) as f64 * TICK_S;
        let harness_s = self_ticks().saturating_sub(self.harness) as f64 * TICK_S;
        let disk = disk_since(&env.dir, self.disk);
        let sent = diff(&self.sent, &env.net.sent_bytes()?);
        let recv = diff(&self.recv, &env.net.received_bytes()?);
        let (kthreads_s, others_s) = match (&self.others, env.acct.parent()) {
            (Some(a), Some(p)) => others_since(a, &others(p)),
            _ => (0.0, 0.0),
        };
        let machine = Machine {
            cpu_s: machine_s,
            harness_s,
            others_s,
            kthreads_s,
        };
        let model = match (self.nodes, nodes) {
            (Some(a), Some(b)) => {
                let names = env.acct.names();
                let uses = (0..b.len())
                    .map(|i| {
                        let c = b[i].since(&a[i]);
                        NodeUse {
                            name: names[i].clone(),
                            cpu_s: c.cpu_ns as f64 / 1e9,
                            user_s: c.user_ns as f64 / 1e9,
                            sys_s: c.sys_ns as f64 / 1e9,
                            read_bytes: c.read_bytes,
                            write_bytes: c.write_bytes,
                            sent_bytes: sent.get(i).copied().unwrap_or(0),
                            recv_bytes: recv.get(i).copied().unwrap_or(0),
                        }
                    })
                    .collect();
                Some(PhaseModel::new(uses, machine, &env.model))
            }
            _ => None,
        };
        Ok(Used {
            traffic_bytes: sent.iter().sum(),
            traffic_server_bytes: sent.first().copied().unwrap_or(0),
            cpu_busy,
            disk_busy: disk.busy,
            disk_written_bytes: disk.written_bytes,
            disk_read_bytes: disk.read_bytes,
            model,
        })
    }
}

impl Used {
    /// Adds the phase's fields to its record object `v`.
    pub fn fill(&self, v: &mut Value) {
        v["traffic_bytes"] = json!(self.traffic_bytes);
        v["traffic_server_bytes"] = json!(self.traffic_server_bytes);
        v["cpu_busy"] = json!(self.cpu_busy);
        v["disk_busy"] = json!(self.disk_busy);
        v["disk_written_bytes"] = json!(self.disk_written_bytes);
        v["disk_read_bytes"] = json!(self.disk_read_bytes);
        if let Some(m) = &self.model {
            v["model"] = m.summary_json(self.disk_read_bytes + self.disk_written_bytes);
            v["per_node"] = m.nodes_json();
        }
    }
}
