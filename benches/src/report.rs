//! Output: the table on standard output, cell formatting, ratios and the
//! JSON records.

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::job::{Outcome, Scenario, Transport};
use crate::scenarios::{Group, Spec, Variant};
use crate::stats::{summarize, Summary};

/// The measurements of one group: `runs[variant][round]`, `None` for a
/// failed run.
pub struct Measured<'a> {
    /// The group.
    pub group: &'a Group,
    /// Outcomes per variant per round.
    pub runs: Vec<Vec<Option<Outcome>>>,
}

impl Measured<'_> {
    /// The successful runs of variant `v`.
    pub fn ok(&self, v: usize) -> Vec<&Outcome> {
        self.runs[v].iter().flatten().collect()
    }

    /// Ratios of variant `v`'s headline figure to each baseline's in the
    /// group, per round, summarized, by [`base_name`]. Only shmbus variants
    /// have ratios. A baseline run in several configurations (the bare
    /// ring's sizes) counts with its best figure of each round; the bare
    /// ring with a copy on each side is a baseline of its own.
    pub fn ratios(&self, spec: &dyn Spec, v: usize) -> Vec<(&'static str, Option<Summary>)> {
        if !self.group.variants[v].transport.is_bus() {
            return Vec::new();
        }
        // The job's own scenario: a bridge row measures throughput, latency
        // or setup.
        let higher_is_better = matches!(
            self.group.variants[v].job.scenario,
            Scenario::Throughput | Scenario::Fanout
        );
        let mut bases: Vec<&'static str> = Vec::new();
        for b in &self.group.variants {
            if !b.transport.is_bus() && !bases.contains(&base_name(b)) {
                bases.push(base_name(b));
            }
        }
        let mut out: Vec<(&'static str, Option<Summary>)> = bases
            .into_iter()
            .map(|base| {
                let per_round: Vec<f64> = (0..self.runs[v].len())
                    .filter_map(|round| {
                        let x = spec.headline(self.runs[v][round].as_ref()?)?;
                        let best = self
                            .group
                            .variants
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| !b.transport.is_bus() && base_name(b) == base)
                            .filter_map(|(b, _)| spec.headline(self.runs[b][round].as_ref()?))
                            .reduce(|a, b| if (b > a) == higher_is_better { b } else { a })?;
                        Some(x / best)
                    })
                    .collect();
                (base, summarize(&per_round))
            })
            .collect();
        let me = &self.group.variants[v];
        // A blob against the same bytes streamed.
        if me.job.scenario == Scenario::Blob && me.job.blob {
            let twin = self
                .group
                .variants
                .iter()
                .position(|b| b.transport == Transport::Shm && !b.job.blob);
            if let Some(t) = twin {
                out.push((STREAMED, self.per_round(spec, v, t)));
            }
        }
        // The tokio API against the blocking one, same row otherwise.
        if me.job.asynchronous {
            let twin = self.group.variants.iter().position(|b| {
                b.transport == me.transport
                    && !b.job.asynchronous
                    && b.job.typed == me.job.typed
                    && b.job.copied == me.job.copied
                    && b.job.wait == me.job.wait
            });
            if let Some(t) = twin {
                out.push((SYNC, self.per_round(spec, v, t)));
            }
        }
        out
    }
}

impl Measured<'_> {
    /// Variant `v`'s headline figure over variant `t`'s, per round.
    fn per_round(&self, spec: &dyn Spec, v: usize, t: usize) -> Option<Summary> {
        let per_round: Vec<f64> = (0..self.runs[v].len())
            .filter_map(|round| {
                let x = spec.headline(self.runs[v][round].as_ref()?)?;
                let y = spec.headline(self.runs[t].get(round)?.as_ref()?)?;
                Some(x / y)
            })
            .collect();
        summarize(&per_round)
    }
}

/// The streamed row, as a blob's ratio's baseline.
pub const STREAMED: &str = "streamed";

/// The blocking API's row, as the tokio API's ratio's baseline.
pub const SYNC: &str = "sync";

/// The name a baseline variant's ratios go by: its transport's, or
/// `bare_ring_copied` for the bare ring with a copy on each side, or
/// `uds_tokio` for the Unix socket driven by tokio.
pub fn base_name(v: &Variant) -> &'static str {
    if v.transport == Transport::BareRing && v.job.copied {
        BARE_RING_COPIED
    } else if v.transport == Transport::Uds && v.job.asynchronous {
        UDS_TOKIO
    } else {
        v.transport.name()
    }
}

/// The Unix socket driven by tokio, as a ratio's baseline.
pub const UDS_TOKIO: &str = "uds_tokio";

/// The bare ring with a copy on each side, as a ratio's baseline.
pub const BARE_RING_COPIED: &str = "bare_ring_copied";

/// The table of one scenario.
pub struct Table {
    widths: Vec<usize>,
    baselines: Vec<&'static str>,
}

impl Table {
    /// Prints the scenario's title, notes and column titles.
    pub fn start(spec: &dyn Spec, notes: &[String], baselines: Vec<&'static str>) -> Table {
        let first = match spec.scenario() {
            Scenario::Fanout => "streams",
            Scenario::Idle => "idle",
            _ => "size",
        };
        let mut titles = vec![(first.to_string(), 8), ("transport".to_string(), 15)];
        titles.extend(spec.columns().into_iter().map(|(t, w)| (t.to_string(), w)));
        titles.extend(baselines.iter().map(|b| (format!("×{b}"), 11)));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\n== {}", spec.scenario().name());
        for n in notes {
            let _ = writeln!(out, "   {n}");
        }
        let table = Table {
            widths: titles.iter().map(|t| t.1).collect(),
            baselines,
        };
        let cells: Vec<String> = titles.into_iter().map(|t| t.0).collect();
        table.print(&cells);
        table
    }

    fn print(&self, cells: &[String]) {
        let mut line = String::new();
        for (i, (c, w)) in cells.iter().zip(&self.widths).enumerate() {
            if i < 2 {
                line.push_str(&format!("{c:<w$} "));
            } else {
                line.push_str(&format!("{c:>w$} "));
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line.trim_end());
        let _ = out.flush();
    }

    /// Prints a group's rows.
    pub fn group(&self, spec: &dyn Spec, m: &Measured<'_>) {
        for (v, variant) in m.group.variants.iter().enumerate() {
            let runs = m.ok(v);
            let title = if v == 0 {
                m.group.title.clone()
            } else {
                String::new()
            };
            let mut cells = vec![title, variant.label()];
            if runs.is_empty() {
                cells.push("failed".into());
                self.print(&cells);
                continue;
            }
            cells.extend(spec.cells(&runs));
            let ratios = m.ratios(spec, v);
            for b in &self.baselines {
                let r = ratios.iter().find(|(t, _)| t == b).and_then(|(_, s)| *s);
                cells.push(
                    r.map_or(
                        if variant.transport.is_bus() {
                            "—"
                        } else {
                            ""
                        }
                        .into(),
                        |s| format!("{:.2}", s.median),
                    ),
                );
            }
            if runs.len() < m.runs[v].len() {
                let failed = m.runs[v].len() - runs.len();
                cells.push(format!("({failed} failed)"));
            }
            self.print(&cells);
        }
    }
}

/// The JSON records of a group: one per variant.
pub fn records(spec: &dyn Spec, m: &Measured<'_>) -> Vec<Value> {
    let mut out = Vec::new();
    for (v, variant) in m.group.variants.iter().enumerate() {
        let runs = m.ok(v);
        let mut r = Map::new();
        r.insert("scenario".into(), spec.scenario().name().into());
        r.insert("transport".into(), variant.transport.name().into());
        if spec.scenario() != Scenario::Idle {
            r.insert("size".into(), variant.job.size.into());
        }
        r.insert("runs".into(), runs.len().into());
        r.insert("config".into(), crate::baselines::config(&variant.job));
        r.insert("failed".into(), (m.runs[v].len() - runs.len()).into());
        r.extend(spec.fields(variant, &runs));
        let heads: Vec<f64> = runs.iter().filter_map(|o| spec.headline(o)).collect();
        if let Some(s) = summarize(&heads) {
            let name = match variant.job.scenario {
                Scenario::Throughput | Scenario::Fanout => "bytes_per_sec",
                Scenario::Latency | Scenario::Setup | Scenario::Blob => "p50_ns",
                Scenario::Idle => "cpu_ns",
                Scenario::Bridge => unreachable!("bridge rows run other scenarios' jobs"),
                Scenario::Crash | Scenario::Soak | Scenario::Flood => "p99_ns",
            };
            r.insert("headline".into(), name.into());
            r.insert("median".into(), s.median.into());
            r.insert("min".into(), s.min.into());
            r.insert("max".into(), s.max.into());
        }
        let ratios: Map<String, Value> = m
            .ratios(spec, v)
            .into_iter()
            .filter_map(|(t, s)| Some((t.to_string(), Value::from(s?.median))))
            .collect();
        if !ratios.is_empty() {
            r.insert("ratio_vs".into(), Value::Object(ratios));
        }
        out.push(Value::Object(r));
    }
    out
}

/// Writes the records as a JSON array, one record per line.
pub fn write_json(path: &Path, records: &[Value]) -> std::io::Result<()> {
    let mut s = String::from("[\n");
    for (i, r) in records.iter().enumerate() {
        s.push_str(&serde_json::to_string(r)?);
        s.push_str(if i + 1 < records.len() { ",\n" } else { "\n" });
    }
    s.push_str("]\n");
    std::fs::write(path, s)
}
