//! The worker's confinement. Other people's shaders run in this process, next to a Vulkan driver
//! and LLVM: a bug in either that a shader reaches must find a process that can do nothing but
//! GPU work. The worker confines itself first thing, before it opens the device: Landlock holds
//! only for the thread that asks and the threads it starts later, and the driver's threads (where
//! lavapipe runs compiled shaders) are started when the device opens. So the rules cover loading
//! the driver as well as every job:
//!
//! - the parent's death kills it (`PR_SET_PDEATHSIG`), so it never outlives the agent;
//! - resource limits: no core dumps (a dump would hold job data), [`OPEN_FILES`] descriptors,
//!   [`FILE_SIZE`] per file written, [`ADDRESS_SPACE`] of virtual memory;
//! - Landlock: the filesystem is read-only and limited to what a driver reads ([`SYSTEM`]: `/usr`,
//!   `/lib*`, `/sys`, `/proc` and a few files of `/etc`), the GPU's device nodes ([`GPU_NODES`],
//!   read-write), the job blobs (read) and Mesa's shader cache (read-write); the agent's state
//!   directory, and its identity key, are out of reach (best effort: a kernel without Landlock is
//!   reported, not fatal);
//! - seccomp: an allowlist of system calls ([`ALLOWED`]); anything else fails with `EPERM`, among
//!   them every socket, `ptrace`, `execve`, mounts, namespaces, keyrings, BPF and `kill`. A call
//!   outside the list fails rather than killing the worker, so a driver that needs one more call
//!   on other hardware gets an error it can handle, not a dead GPU.
//!
//! Landlock and seccomp are best effort where the kernel lacks them (qemu-user, which runs the
//! aarch64 tests on an x86 host, emulates neither): the worker then says so on stderr and in its
//! [`Report`], and the image's boot test is where the box's own kernel is held to both.
//!
//! On the box, the worker's unit (`gpu/config/edge-gpu-worker@.service`, one per connection to
//! its socket) adds what a process cannot do to itself: its own user, no network, only the GPU's
//! device nodes, a memory cgroup and systemd's own system-call filter; the image's boot test
//! asks that worker for its [`Report`].

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};
use nix::libc;
use nix::sys::resource::{Resource, setrlimit};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Most descriptors open at once.
pub const OPEN_FILES: u64 = 256;
/// Largest file the worker may write (Mesa's shader cache entries; the cache is 128 MiB at most).
pub const FILE_SIZE: u64 = 256 << 20;
/// Most virtual memory. Drivers reserve address space well beyond what they touch (lavapipe's
/// worker peaks near 1 GiB of it with the capability benchmark), and the GPU memory budget comes on
/// top; physical memory is bounded by the unit's cgroup, not by this.
pub const ADDRESS_SPACE: u64 = 16 << 30;

/// Why the worker could not confine itself (it then refuses to serve).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A resource limit or `prctl` was refused.
    #[error("{what}: {source}")]
    Os {
        /// The call, e.g. `setrlimit(RLIMIT_AS)`.
        what: &'static str,
        /// The kernel's answer.
        source: nix::Error,
    },
    /// The Landlock rules could not be made or applied.
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// How much of one layer of the confinement the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforced {
    /// All of it.
    Fully,
    /// Some (an older kernel's Landlock lacks later rights).
    Partially,
    /// None: the kernel does not have it (or it is disabled at boot).
    Not,
}

/// What the kernel enforces of the confinement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Confined {
    /// The filesystem rules.
    pub landlock: Enforced,
    /// The system-call allowlist (fully, or not at all).
    pub seccomp: Enforced,
}

/// Where the worker may read and write beyond the system's files.
#[derive(Debug, Clone)]
pub struct Places {
    /// The job blobs (read); `None` for discovery, which runs no job.
    pub blobs: Option<PathBuf>,
    /// Mesa's shader cache (read-write), where one is configured.
    pub shader_cache: Option<PathBuf>,
}

impl Places {
    /// `blobs`, and the shader cache Mesa would use with this environment
    /// (`MESA_SHADER_CACHE_DIR`, else `$XDG_CACHE_HOME/mesa_shader_cache`, else
    /// `$HOME/.cache/mesa_shader_cache`).
    pub fn new(blobs: Option<&Path>) -> Self {
        let env = |name| std::env::var_os(name).map(PathBuf::from);
        let shader_cache = env("MESA_SHADER_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("mesa_shader_cache")))
            .or_else(|| env("HOME").map(|d| d.join(".cache/mesa_shader_cache")));
        Self {
            blobs: blobs.map(Path::to_owned),
            shader_cache,
        }
    }
}

/// Asks the kernel to kill this process when its parent dies, and exits at once if the parent is
/// already gone (it may have died before the request).
pub fn die_with_parent() -> Result<(), SandboxError> {
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|source| {
        SandboxError::Os {
            what: "prctl(PR_SET_PDEATHSIG)",
            source,
        }
    })?;
    if nix::unistd::getppid() != parent {
        std::process::exit(0);
    }
    Ok(())
}

/// Starts a thread that exits the process as soon as the other end of stdin hangs up (the agent
/// closed the connection or the pipe, or died), without reading from it: a worker wedged in a
/// driver call is gone all the same. On the box the worker is not the agent's child, so this,
/// not a signal, is how the agent stops it.
pub fn exit_when_hung_up() {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    std::thread::spawn(|| {
        let stdin = std::io::stdin();
        // nix does not name it.
        let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
        loop {
            // POLLRDHUP: a socket's peer shut down its writing; a pipe reports POLLHUP by itself.
            let mut fds = [PollFd::new(stdin.as_fd(), rdhup)];
            // Only hang-ups wake it (no POLLIN: the requests are not its to read).
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {
                    let hung_up = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
                    // nix reads a POLLRDHUP, which it does not know, as no flags at all.
                    if fds[0].revents().is_none_or(|r| r.intersects(hung_up)) {
                        exit_now();
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("edge-gpu-worker: cannot watch stdin ({e}); not watching");
                    return;
                }
            }
        }
    });
}

/// Ends the process at once, without exit handlers: the driver's would wait for its threads,
/// which may be running the shader that wedged the worker.
#[allow(
    unsafe_code,
    reason = "_exit(2) has no preconditions; neither std nor nix offers it"
)]
fn exit_now() -> ! {
    // SAFETY: `_exit` takes a plain integer and never returns; it touches no memory of ours.
    unsafe { libc::_exit(0) }
}

/// Confines this process for good: limits, Landlock, then seccomp (last, so that the calls the
/// others need are not in its list). Call it before anything starts a thread: every thread started
/// afterwards inherits all of it.
pub fn confine(places: &Places) -> Result<Confined, SandboxError> {
    limit(Resource::RLIMIT_CORE, 0, "setrlimit(RLIMIT_CORE)")?;
    limit(
        Resource::RLIMIT_NOFILE,
        OPEN_FILES,
        "setrlimit(RLIMIT_NOFILE)",
    )?;
    limit(Resource::RLIMIT_FSIZE, FILE_SIZE, "setrlimit(RLIMIT_FSIZE)")?;
    limit(Resource::RLIMIT_AS, ADDRESS_SPACE, "setrlimit(RLIMIT_AS)")?;
    let landlock = landlock(places)?;
    let seccomp = seccomp()?;
    Ok(Confined { landlock, seccomp })
}

fn limit(resource: Resource, value: u64, what: &'static str) -> Result<(), SandboxError> {
    setrlimit(resource, value, value).map_err(|source| SandboxError::Os { what, source })
}

/// What the worker may read of the system (a path that does not exist is left out): the
/// libraries and the driver, the loader's and Mesa's configuration, what glibc reads at start,
/// and the kernel's views of the hardware. Not the rest of `/etc` (Wi-Fi keyfiles, the fleet's
/// config), not `/var`, not `/home`.
pub const SYSTEM: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/sys",
    "/proc",
    "/etc/vulkan",
    "/etc/drirc",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
];

/// The device nodes the worker may open for reading and writing: the GPU's (DRM render nodes,
/// the Adreno's KGSL node), and `/dev/null`. No other device: not the disk, not the input
/// devices.
pub const GPU_NODES: &[&str] = &["/dev/dri", "/dev/kgsl-3d0", "/dev/null"];

fn landlock(places: &Places) -> Result<Enforced, SandboxError> {
    // The newest rights this crate knows, downgraded to what the kernel has (best effort).
    let abi = ABI::V5;
    let read = AccessFs::from_read(abi);
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(SYSTEM, read))?
        .add_rules(path_beneath_rules(GPU_NODES, read | AccessFs::WriteFile))?
        .add_rules(path_beneath_rules(places.blobs.iter(), read))?;
    if let Some(cache) = &places.shader_cache {
        // Mesa makes the directory on first use; a rule needs it to exist.
        let _ = std::fs::create_dir_all(cache);
        ruleset = ruleset.add_rules(path_beneath_rules([cache], AccessFs::from_all(abi)))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partially,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}

/// The system calls the worker may make once confined: memory, files (those Landlock lets it
/// open), threads and their synchronisation, time, signals to itself, and the GPU's `ioctl`s.
/// Found by tracing the worker (`strace -f`) from its start through every built-in kernel on
/// lavapipe, then widened with what GPU drivers use on real hardware (`ioctl`, `memfd_create`,
/// `eventfd2`, `epoll`, `ppoll`). glibc's lookup of the user in `nscd` (a socket) is refused and
/// it falls back to the files.
pub const ALLOWED: &[libc::c_long] = &[
    // Memory.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_membarrier,
    libc::SYS_get_mempolicy,
    libc::SYS_memfd_create,
    // Files and descriptors (what Landlock lets it open).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_flock,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_ioctl,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    // Threads and their synchronisation (not processes: `clone` here makes the driver's threads;
    // without `execve` a fork could only run this same confined code).
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_getparam,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    // Time.
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    // Signals, to itself only (`tgkill` for `abort`; no `kill`).
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_restart_syscall,
    // About itself.
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getrandom,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_prctl,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_getcwd,
    // x86_64 keeps the older forms beside the `*at` ones, and glibc still uses some.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_arch_prctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
];

fn seccomp() -> Result<Enforced, SandboxError> {
    let arch = if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    };
    let rules = ALLOWED.iter().map(|&call| (call, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))?;
    match seccompiler::apply_filter_all_threads(&program) {
        Ok(()) => Ok(Enforced::Fully),
        // No seccomp in this kernel (or emulator): every other error is a refusal to run.
        Err(seccompiler::Error::Seccomp(e)) if e.raw_os_error() == Some(libc::ENOSYS) => {
            Ok(Enforced::Not)
        }
        Err(e) => Err(SandboxError::Seccomp(e.to_string())),
    }
}

/// What a confined worker can and cannot do, from the inside (`edge-gpu-worker sandbox`): the
/// image's boot test and the host tests read it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Real user id.
    pub uid: u32,
    /// `CapEff` from `/proc/self/status` (hex).
    pub cap_eff: String,
    /// `Seccomp` from `/proc/self/status`: 2 is a filter.
    pub seccomp: u32,
    /// `NoNewPrivs` from `/proc/self/status`.
    pub no_new_privs: u32,
    /// What the kernel enforces of the confinement.
    pub confined: Confined,
    /// Opening the probe file for reading (the agent's identity key in the tests).
    pub open_probe: String,
    /// `socket(AF_INET, SOCK_STREAM)`.
    pub socket_inet: String,
    /// `ptrace(PTRACE_SEIZE)` of the agent: the peer of stdin where it is a socket (the box's
    /// socket unit), else the parent.
    pub ptrace_parent: String,
    /// `RLIMIT_CORE`, `RLIMIT_NOFILE` and `RLIMIT_AS` (soft limits).
    pub rlimits: [u64; 3],
    /// The names of the environment variables it was started with.
    pub env: Vec<String>,
}

/// The agent's process: the peer of stdin where it is a Unix socket, else the parent.
fn agent_pid() -> nix::unistd::Pid {
    use std::os::fd::AsFd;
    nix::sys::socket::getsockopt(
        &std::io::stdin().as_fd(),
        nix::sys::socket::sockopt::PeerCredentials,
    )
    .map_or_else(
        |_| nix::unistd::getppid(),
        |cred| nix::unistd::Pid::from_raw(cred.pid()),
    )
}

/// Probes this (confined) process; `probe` is a file it must not be able to read.
pub fn report(confined: Confined, probe: &Path) -> Report {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let outcome = |result: Result<(), String>| match result {
        Ok(()) => "allowed".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    let open_probe = outcome(
        std::fs::File::open(probe)
            .map(drop)
            .map_err(|e| e.to_string()),
    );
    let socket_inet = outcome(
        nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .map(drop)
        .map_err(|e| e.to_string()),
    );
    let parent = agent_pid();
    let ptrace_parent = outcome(
        nix::sys::ptrace::seize(parent, nix::sys::ptrace::Options::empty())
            .map(|()| {
                // Seized without stopping it; let go at once.
                let _ = nix::sys::ptrace::detach(parent, None);
            })
            .map_err(|e| e.to_string()),
    );
    let soft =
        |resource| nix::sys::resource::getrlimit(resource).map_or(u64::MAX, |(soft, _)| soft);
    Report {
        uid: nix::unistd::getuid().as_raw(),
        cap_eff: field("CapEff"),
        seccomp: field("Seccomp").parse().unwrap_or(0),
        no_new_privs: field("NoNewPrivs").parse().unwrap_or(0),
        confined,
        open_probe,
        socket_inet,
        ptrace_parent,
        rlimits: [
            soft(Resource::RLIMIT_CORE),
            soft(Resource::RLIMIT_NOFILE),
            soft(Resource::RLIMIT_AS),
        ],
        env: std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect(),
    }
}
