//! The standard `process_*` metrics (resident memory, CPU time, open files, threads, start
//! time) read from the kernel on each scrape, and `qeb_build_info`. Written here instead of
//! pulling in a procfs crate: a handful of numbers from `/proc/self` and `getrusage`.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// When this process started (the first call, made when the metrics are built).
pub fn start_time() -> f64 {
    static START: OnceLock<f64> = OnceLock::new();
    *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    })
}

/// The text exposition of the build info and the process metrics.
pub fn render() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP qeb_build_info The running build: version, git commit and build date.\n\
         # TYPE qeb_build_info gauge\n\
         qeb_build_info{{version=\"{}\",commit=\"{}\",built=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        env!("QEB_GIT_COMMIT"),
        env!("QEB_BUILD_DATE")
    );
    for (name, kind, help, value) in readings() {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
    out
}

/// Each process metric: name, type, help and its value now (`None`: not readable here).
fn readings() -> [(&'static str, &'static str, &'static str, Option<f64>); 7] {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        let n: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(n * 1024.0)
    };
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok());
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kib("VmRSS:"),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            kib("VmSize:"),
        ),
        (
            "process_threads",
            "gauge",
            "OS threads of the process.",
            threads,
        ),
        ("process_open_fds", "gauge", "Open file descriptors.", fds),
        (
            "process_max_fds",
            "gauge",
            "Limit of open file descriptors.",
            max_fds(),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time in seconds.",
            cpu_seconds(),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
            Some(start_time()),
        ),
    ]
}

#[cfg(unix)]
fn cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes the struct it is given, which is valid and ours.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

#[cfg(unix)]
fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur as f64)
}

#[cfg(not(unix))]
fn cpu_seconds() -> Option<f64> {
    None
}

#[cfg(not(unix))]
fn max_fds() -> Option<f64> {
    None
}
