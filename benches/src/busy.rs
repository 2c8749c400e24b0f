//! Is the machine quiet enough to measure? At the start of a run the
//! harness counts the tasks runnable right now (`procs_running` of
//! `/proc/stat`, the harness itself excluded, in several looks) and reads
//! the 1-minute load average (`/proc/loadavg`). Other runnable tasks mean
//! other work shares the CPUs with the peers, and the figures, latency most
//! of all, will be unreliable. The load average lags by a minute: high
//! with nothing else runnable now means work that has just ended (a build,
//! an earlier run), which is worth a note, not a verdict.

use std::time::Duration;

use serde_json::{json, Value};

/// How many times `procs_running` is read, and how far apart: one look can
/// catch a short-lived task.
const LOOKS: usize = 9;
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// What `/proc` said at the start.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// CPUs available to the harness.
    pub cpus: usize,
    /// The 1-minute load average.
    pub load_1m: f64,
    /// Tasks runnable besides the harness, at each look.
    pub runnable: Vec<u32>,
}

impl Seen {
    /// The median of the looks at runnable tasks.
    pub fn runnable_median(&self) -> u32 {
        let mut v = self.runnable.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }
}

/// The 1-minute load average: the first field of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Runnable tasks (`procs_running`) from `/proc/stat`.
pub fn parse_procs_running(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("procs_running"))
        .and_then(|v| v.trim().parse().ok())
}

/// Why figures will be unreliable, or `None` when the machine is quiet: at
/// least one other runnable task per four CPUs (at least one) in the median
/// of the looks. The load average, when high too, is named as well.
pub fn verdict(seen: &Seen) -> Option<String> {
    let cpus = seen.cpus.max(1);
    let others = seen.runnable_median();
    if others < cpus.div_ceil(4) as u32 {
        return None;
    }
    let mut why = Vec::new();
    if high_load(seen) {
        why.push(load_text(seen));
    }
    why.push(format!(
        "{others} other task{} runnable now",
        if others == 1 { "" } else { "s" }
    ));
    Some(format!(
        "the machine is busy ({}): other work shares the CPUs, so the figures, latency most of all, will be unreliable",
        why.join("; ")
    ))
}

/// A note when the load average is high but nothing else runs now: the
/// work behind it has likely just ended.
pub fn note(seen: &Seen) -> Option<String> {
    (verdict(seen).is_none() && high_load(seen)).then(|| {
        format!(
            "{}, but no other task is runnable now: recent work (a build, an earlier run) has likely ended; if it comes back, the figures will be unreliable",
            load_text(seen)
        )
    })
}

/// A 1-minute load average of half the CPUs or more.
fn high_load(seen: &Seen) -> bool {
    seen.load_1m >= 0.5 * seen.cpus.max(1) as f64
}

fn load_text(seen: &Seen) -> String {
    let cpus = seen.cpus.max(1);
    format!(
        "1-minute load average {:.2} on {cpus} CPU{}",
        seen.load_1m,
        if cpus == 1 { "" } else { "s" }
    )
}

/// Looks at `/proc`; `None` where it cannot be read.
pub fn look() -> Option<Seen> {
    let load_1m = parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)?;
    let mut runnable = Vec::with_capacity(LOOKS);
    for i in 0..LOOKS {
        if i > 0 {
            std::thread::sleep(LOOK_EVERY);
        }
        let running = parse_procs_running(&std::fs::read_to_string("/proc/stat").ok()?)?;
        // The harness itself is running while it reads.
        runnable.push(running.saturating_sub(1));
    }
    Some(Seen {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_1m,
        runnable,
    })
}

/// Checks the machine at the start of a run: warns on stderr when it is
/// busy, and returns the JSON record of what was seen.
pub fn check(machine: &str) -> Value {
    let Some(seen) = look() else {
        eprintln!("shmbus-bench: warning: cannot read /proc/loadavg or /proc/stat to tell whether the machine is busy");
        return json!({ "machine": machine, "busy": Value::Null });
    };
    let warning = verdict(&seen);
    if let Some(w) = &warning {
        eprintln!("shmbus-bench: warning: {w}");
    }
    let note = note(&seen);
    if let Some(n) = &note {
        eprintln!("shmbus-bench: note: {n}");
    }
    let mut record = json!({
        "machine": machine,
        "cpus": seen.cpus,
        "load_1m": seen.load_1m,
        "runnable_others": seen.runnable_median(),
        "busy": warning.is_some(),
    });
    if let Some(w) = warning {
        record["warning"] = w.into();
    }
    if let Some(n) = note {
        record["note"] = n.into();
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(cpus: usize, load_1m: f64, runnable: &[u32]) -> Seen {
        Seen {
            cpus,
            load_1m,
            runnable: runnable.to_vec(),
        }
    }

    #[test]
    fn proc_files_parse() {
        assert_eq!(parse_loadavg("0.51 0.81 0.38 2/87 12303\n"), Some(0.51));
        assert_eq!(parse_loadavg(""), None);
        let stat = "cpu  1 2 3 4\nctxt 99\nprocs_running 3\nprocs_blocked 0\n";
        assert_eq!(parse_procs_running(stat), Some(3));
        assert_eq!(parse_procs_running("cpu 1 2\n"), None);
    }

    #[test]
    fn a_quiet_machine_passes() {
        assert_eq!(verdict(&seen(2, 0.3, &[0, 0, 1, 0, 0])), None);
        assert_eq!(verdict(&seen(16, 3.0, &[2, 3, 1])), None);
        assert_eq!(verdict(&seen(2, 0.0, &[])), None);
    }

    #[test]
    fn a_high_load_average_with_nothing_runnable_is_a_note_not_a_verdict() {
        // What an earlier run of the harness leaves behind for a minute.
        let quiet_now = seen(2, 68.14, &[0, 0, 0]);
        assert_eq!(verdict(&quiet_now), None);
        let n = note(&quiet_now).expect("a note");
        assert!(n.contains("1-minute load average 68.14 on 2 CPUs"), "{n}");
        assert!(n.contains("no other task is runnable now"), "{n}");
        assert_eq!(note(&seen(2, 0.3, &[0, 0, 0])), None);
        // Busy now: the verdict names the load too, and there is no note.
        let busy = seen(2, 2.31, &[1, 1, 2]);
        let w = verdict(&busy).expect("busy");
        assert!(
            w.contains("1-minute load average 2.31 on 2 CPUs; 1 other task"),
            "{w}"
        );
        assert_eq!(note(&busy), None);
    }

    #[test]
    fn runnable_tasks_are_busy_in_the_median_of_the_looks() {
        let w = verdict(&seen(2, 0.1, &[1, 2, 1, 0, 1])).expect("busy");
        assert!(w.contains("1 other task runnable now"), "{w}");
        assert!(!w.contains("load average"), "{w}");
        // One look catching a passing task is not enough.
        assert_eq!(verdict(&seen(2, 0.1, &[0, 0, 5, 0, 0])), None);
        // On 16 CPUs, four others are a quarter of the machine.
        assert_eq!(verdict(&seen(16, 0.1, &[3, 3, 3])), None);
        let w = verdict(&seen(16, 9.0, &[4, 5, 4])).expect("busy");
        assert!(
            w.contains("load average 9.00 on 16 CPUs; 4 other tasks"),
            "{w}"
        );
    }
}
