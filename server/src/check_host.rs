//! `ron-node check-host`: what this host offers a latency-critical node, and
//! the commands that would improve it.

use crate::config::Config;
use crate::config::online_cores;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// The CPU frequency governor and transparent huge pages.
fn cpu_settings(cores: usize, advice: &mut Vec<String>) {
    let governors: Vec<String> = (0..cores)
        .filter_map(|c| {
            std::fs::read_to_string(format!(
                "/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"
            ))
            .ok()
        })
        .map(|g| g.trim().to_owned())
        .collect();
    if governors.is_empty() {
        println!("cpu governor: not exposed (virtual machine or no cpufreq)");
    } else {
        println!("cpu governor: {}", governors.join(" "));
        if governors.iter().any(|g| g != "performance") {
            advice.push("cpupower frequency-set -g performance".into());
        }
    }

    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    println!("transparent huge pages: {}", thp.trim());
    if thp.contains("[always]") {
        advice.push("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled   # avoid compaction stalls".into());
    }
}

/// The worst case of every bounded consumer of memory, for this config.
fn print_budget(config: &Config) {
    let shards = config.layout(online_cores()).map_or(1, |l| l.shards.len());
    println!("memory budget, worst cases, {shards} shard(s):");
    for line in crate::limits::memory_budget(config, shards) {
        let scope = if line.per_node { "per node " } else { "per shard" };
        let mib = line.bytes as f64 / f64::from(1 << 20);
        println!("  {mib:>10.1} MiB {scope}  {}: {}", line.consumer, line.why);
    }
    let total = crate::limits::memory_budget_total(config, shards) as f64 / f64::from(1 << 20);
    println!("  {total:>10.1} MiB in all");
}

/// fdatasync rounds for the latency probe.
const FSYNC_ROUNDS: usize = 64;

pub fn report(config: &Config) {
    let mut advice: Vec<String> = Vec::new();
    println!("ron-node check-host");

    let ring: std::io::Result<io_uring::IoUring> =
        io_uring::IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(8);
    match ring {
        Ok(_) => println!("io_uring: available with DEFER_TASKRUN + SINGLE_ISSUER"),
        Err(error) => {
            println!(
                "io_uring: NOT usable with DEFER_TASKRUN ({error}); ron-node needs Linux >= 6.1"
            );
            advice.push("# upgrade to a kernel >= 6.1 with io_uring enabled (sysctl kernel.io_uring_disabled=0)".into());
        }
    }

    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    let cores = online_cores();
    let layout = config.layout(cores);
    let executors = layout.as_ref().map_or(1, |l| l.shards.len() as u64);
    let needed = executors * (config.executor.io_memory_kib as u64 * 1024 + (1 << 20));
    println!(
        "memlock: soft {} KiB, hard {} KiB; this layout needs about {} KiB",
        limit.rlim_cur / 1024,
        limit.rlim_max / 1024,
        needed / 1024
    );
    if limit.rlim_cur < needed {
        advice
            .push(format!("ulimit -l {}   # or LimitMEMLOCK= in the service unit", needed / 1024));
    }

    match &layout {
        Ok(layout) => println!(
            "cores: {cores} online; shards on {:?}, committer on {}",
            layout.shards, layout.committer
        ),
        Err(error) => println!("cores: {cores} online; the configured layout is invalid: {error}"),
    }

    cpu_settings(cores, &mut advice);

    let dir = &config.data_dir;
    let _ = std::fs::create_dir_all(dir);
    println!("data_dir: {} on {}", dir.display(), filesystem_of(dir));
    match fsync_latency(dir) {
        Ok((p50, p99)) => {
            println!("fdatasync of 4 KiB ({FSYNC_ROUNDS} rounds): p50 {p50:?}, p99 {p99:?}");
            if p99 > Duration::from_millis(5) {
                advice.push("# the log's device syncs slowly: put data_dir on NVMe with power-loss protection".into());
            }
        }
        Err(error) => println!("fdatasync probe failed: {error}"),
    }

    print_budget(config);

    if advice.is_empty() {
        println!("nothing to change");
    } else {
        println!("to change:");
        for line in advice {
            println!("  {line}");
        }
    }
}

fn filesystem_of(dir: &std::path::Path) -> String {
    let Ok(dir) = dir.canonicalize() else { return "unknown".into() };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point).then(|| (point.len(), format!("{kind} ({device} at {point})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, text)| text)
}

fn fsync_latency(dir: &std::path::Path) -> std::io::Result<(Duration, Duration)> {
    let path = dir.join(".check-host-fsync");
    let mut file =
        std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(FSYNC_ROUNDS);
    for _ in 0..FSYNC_ROUNDS {
        file.write_all(&block)?;
        let started = Instant::now();
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    samples.sort_unstable();
    Ok((samples[FSYNC_ROUNDS / 2], samples[FSYNC_ROUNDS * 99 / 100]))
}
