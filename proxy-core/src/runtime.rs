//! Process setup as Go does it: threads from the cgroup CPU limit, open files raised to the hard limit.

use std::{fs, io, path::Path};

/// Whole CPUs the cgroup lets this process use, rounded up; `None` when unlimited or unknown.
pub fn cgroup_cpu_limit() -> Option<usize> {
    cgroup_cpu_limit_at(Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_cpu_limit`] for a cgroup filesystem mounted at `root` (v2 `cpu.max`, or v1
/// `cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us`).
pub fn cgroup_cpu_limit_at(root: &Path) -> Option<usize> {
    let (quota, period) = if let Ok(max) = fs::read_to_string(root.join("cpu.max")) {
        let mut it = max.split_whitespace();
        let quota = it.next()?;
        if quota == "max" {
            return None;
        }
        (
            quota.parse::<f64>().ok()?,
            it.next().unwrap_or("100000").parse::<f64>().ok()?,
        )
    } else {
        let quota = fs::read_to_string(root.join("cpu/cpu.cfs_quota_us"))
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        let period = fs::read_to_string(root.join("cpu/cpu.cfs_period_us"))
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        if quota <= 0.0 {
            return None;
        }
        (quota, period)
    };
    if period <= 0.0 {
        return None;
    }
    // A fractional limit still gets one thread, as Go's maxprocs (which rounds down, minimum 1).
    Some(((quota / period).floor() as usize).max(1))
}

/// Whole CPUs the cgroup's share stands for (its CPU request), rounded up; `None` when unknown.
///
/// Kubernetes turns a request of `m` millicores into v1 `cpu.shares = m × 1024 / 1000`, and v2
/// `cpu.weight = 1 + (shares − 2) × 9999 / 262142`.
pub fn cgroup_cpu_request_at(root: &Path) -> Option<usize> {
    let shares = if let Ok(w) = fs::read_to_string(root.join("cpu.weight")) {
        let weight = w.trim().parse::<f64>().ok()?;
        (weight - 1.0) * 262_142.0 / 9_999.0 + 2.0
    } else {
        fs::read_to_string(root.join("cpu/cpu.shares"))
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?
    };
    Some(((shares / 1024.0).ceil() as usize).max(1))
}

/// Worker threads to run: the pod's CPU limit (as Go's maxprocs), else its CPU request, never
/// more than the CPUs this process may use and never one per node core. A sidecar without a
/// limit is only guaranteed its request (25m by default), and threads beyond that only contend.
pub fn worker_threads() -> usize {
    let root = Path::new("/sys/fs/cgroup");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cgroup_cpu_limit_at(root)
        .or_else(|| cgroup_cpu_request_at(root))
        .unwrap_or(1)
        .clamp(1, cpus)
}

/// Raises the soft open-files limit to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok(hard)
}

/// The kernel's accept-queue ceiling (`net.core.somaxconn`), used as the listen backlog.
pub fn somaxconn() -> i32 {
    fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// A Tokio runtime with `workers` threads: a current-thread runtime for one, which avoids
/// cross-thread wake-ups entirely.
pub fn build(workers: usize) -> io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// A process's runtime as [`start`] set it up.
#[derive(Debug)]
pub struct Started {
    /// The runtime.
    pub runtime: tokio::runtime::Runtime,
    /// Its worker threads.
    pub workers: usize,
    /// The open-files limit now in force, if it could be raised.
    pub nofile: Option<u64>,
}

/// A binary's start: raises the open-files limit (a warning when it cannot) and builds the
/// runtime with `workers` threads, or [`worker_threads`] when `None`.
pub fn start(workers: Option<usize>) -> io::Result<Started> {
    let nofile = raise_nofile_limit()
        .map_err(|e| tracing::warn!(error = %e, "could not raise the open-files limit"))
        .ok();
    let workers = workers.unwrap_or_else(worker_threads);
    Ok(Started {
        runtime: build(workers)?,
        workers,
        nofile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("pc-cgroup-{}-{n}", std::process::id()));
        for (name, content) in files {
            let p = d.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        d
    }

    #[test]
    fn reads_cgroup_v2_and_v1_limits() {
        assert_eq!(
            cgroup_cpu_limit_at(&dir(&[("cpu.max", "250000 100000\n")])),
            Some(2)
        );
        assert_eq!(
            cgroup_cpu_limit_at(&dir(&[("cpu.max", "50000 100000\n")])),
            Some(1)
        );
        assert_eq!(
            cgroup_cpu_limit_at(&dir(&[("cpu.max", "max 100000\n")])),
            None
        );
        assert_eq!(
            cgroup_cpu_limit_at(&dir(&[
                ("cpu/cpu.cfs_quota_us", "400000\n"),
                ("cpu/cpu.cfs_period_us", "100000\n")
            ])),
            Some(4)
        );
        assert_eq!(
            cgroup_cpu_request_at(&dir(&[("cpu/cpu.shares", "1024\n")])),
            Some(1)
        );
        assert_eq!(
            cgroup_cpu_request_at(&dir(&[("cpu/cpu.shares", "25\n")])),
            Some(1)
        );
        assert_eq!(
            cgroup_cpu_request_at(&dir(&[("cpu/cpu.shares", "2048\n")])),
            Some(2)
        );
        // 1500m: shares 1536, weight 59.
        assert_eq!(
            cgroup_cpu_request_at(&dir(&[("cpu.weight", "59\n")])),
            Some(2)
        );
        assert_eq!(
            cgroup_cpu_limit_at(&dir(&[
                ("cpu/cpu.cfs_quota_us", "-1\n"),
                ("cpu/cpu.cfs_period_us", "100000\n")
            ])),
            None
        );
    }
}
