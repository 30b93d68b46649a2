//! The writer thread yields the core to the threads that feed it.
//!
//! An append wakes the writer when the queue was empty. Under the default policy
//! (`SCHED_OTHER`) the woken writer preempts whoever runs on that core, which on a
//! busy core is the runtime thread that is parsing the next requests: the writer
//! takes a group of the one or few appends queued so far, and every group costs
//! an `fdatasync` (~100 us of kernel CPU on this project's VM, bench/RESULTS.md).
//! Under `SCHED_BATCH` a woken thread does not preempt: it runs when the core's
//! other threads block (every request waits for its ack, so the group is complete)
//! or at the end of their scheduler slice, and the group holds what arrived
//! meanwhile. On an idle core, or when another core is free, it runs at once, so
//! a lone request waits no longer; under saturation an ack waits at most one slice
//! longer. The thread keeps its share of the CPU and its nice value (`SCHED_BATCH`
//! is the normal time-sharing class without wakeup preemption, see sched(7)).
//! Measured with the node on one core: 1,000 connections +15-39 % req/s with
//! 5-8x larger groups, 64 connections +8 % (median of 18 pairs; bench/RESULTS.md).

/// Puts the calling thread under `SCHED_BATCH` with its nice value unchanged.
/// Linux only; elsewhere a no-op.
#[cfg(target_os = "linux")]
pub(crate) fn batch_current_thread() -> Result<(), String> {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    use thread_priority::{ThreadPriority, ThreadPriorityValue};

    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    let nice = current_nice()?;
    // The crate maps a 0-99 priority onto nice values for the normal policies: pick
    // the one that keeps this thread's.
    let priority = (0..=99u8)
        .filter_map(|p| ThreadPriorityValue::try_from(p).ok())
        .map(ThreadPriority::Crossplatform)
        .find(|p| p.to_posix(policy).ok() == Some(nice))
        .ok_or_else(|| format!("no priority maps to nice {nice}"))?;
    set_thread_priority_and_policy(thread_native_id(), priority, policy)
        .map_err(|e| format!("{e:?}"))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn batch_current_thread() -> Result<(), String> {
    Ok(())
}

/// The calling thread's nice value, from `/proc/thread-self/stat`.
#[cfg(target_os = "linux")]
fn current_nice() -> Result<i32, String> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").map_err(|e| e.to_string())?;
    stat_field(&stat, 19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no nice value in /proc/thread-self/stat".into())
}

/// Field `n` (1-based, as proc(5) numbers them) of a `/proc/.../stat` line; the
/// command name (field 2) may hold spaces and parentheses, so counting starts
/// after its last `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

#[cfg(test)]
mod tests {
    use super::stat_field;

    /// (policy, nice) of every WAL writer thread of this process.
    #[cfg(target_os = "linux")]
    fn writers() -> Vec<(String, String)> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != "sluice-wal-writ" {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            let field = |n| stat_field(&stat, n).unwrap().to_string();
            found.push((field(41), field(19)));
        }
        found
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_runs_under_sched_batch_keeping_its_nice_value() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = crate::Wal::open(dir.path(), crate::WalOptions::default()).unwrap();
        // Once an append is durable the writer has run past its start.
        wal.append_blocking(b"one".to_vec()).unwrap();
        let nice = super::current_nice().unwrap().to_string();
        // Another test's writer may be starting meanwhile (under `cargo test`):
        // give every writer a moment to get there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let found = loop {
            let found = writers();
            let batch = |(policy, _): &(String, String)| policy == "3"; // SCHED_BATCH
            if (!found.is_empty() && found.iter().all(batch))
                || std::time::Instant::now() > deadline
            {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(!found.is_empty(), "no writer thread found");
        for (policy, thread_nice) in found {
            assert_eq!(policy, "3", "writer policy (3 = SCHED_BATCH)");
            assert_eq!(
                thread_nice, nice,
                "the writer keeps the nice value it was started with"
            );
        }
        wal.close().unwrap();
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // pid, comm, then fields 3 (state) to 18, nice (19), 20 to 40, policy (41).
        let middle: Vec<String> = (4..=18).map(|f| f.to_string()).collect();
        let tail: Vec<String> = (20..=40).map(|f| f.to_string()).collect();
        let line = format!(
            "4242 (a) b (c)) S {} -3 {} 3 0",
            middle.join(" "),
            tail.join(" ")
        );
        let line = line.as_str();
        assert_eq!(stat_field(line, 3), Some("S"));
        assert_eq!(stat_field(line, 19), Some("-3"));
        assert_eq!(stat_field(line, 41), Some("3"));
        assert_eq!(stat_field(line, 2), None);
        assert_eq!(stat_field("no parenthesis", 3), None);
    }
}
