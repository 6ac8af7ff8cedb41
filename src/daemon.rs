//! The running daemon: fork before any thread, a readiness pipe so the foreground
//! process exits only once the mount answers, signals, the state file (`crate::state`)
//! and unmounting when asked. Mountpoint checks, `status` and `umount` are
//! `crate::mounts`; the scratch upper layer is `crate::scratch`.
//!
//! `auto_unmount`: fuser implements it only through `fusermount3`, which stays beside
//! the daemon and unmounts when the daemon dies, and only with `allow_other` (or fuser's
//! `allow_root`, which also mounts with the kernel's `allow_other` and then filters
//! users in userspace, letting cached attributes through to everyone). So a mount gets
//! `auto_unmount` exactly when `--allow-other` is given and `fusermount3` is installed;
//! without `--allow-other` the kernel keeps other users out, and a daemon killed with
//! SIGKILL leaves a stale mount that `rootfs-mount umount` or `--force` recovers.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fuser::{Config, MountOption, Session, SessionACL};

use crate::fault::FaultLog;
use crate::fuse::passthrough::PassthroughPolicy;
use crate::fuse::BuildFs;
use crate::host_idle;
use crate::logging::{self, Destination};
use crate::mounts::{fs_source, mounts, umount, FS_NAME, FS_TYPE};
use crate::notify;
use crate::scratch;
use crate::state::{self, MountDescription, StateFile};
use crate::sys;
use crate::tree::MergedTree;

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub foreground: bool,
    pub allow_other: bool,
    pub log_filter: String,
    pub log_file: Option<PathBuf>,
    /// Mount read-write (there is an upper layer).
    pub writable: bool,
    /// A scratch upper layer to remove once unmounted.
    pub scratch_upper: Option<PathBuf>,
    /// What the mount is made of, for its state file and `status`.
    pub description: MountDescription,
    /// How plain backing files are read (`--no-passthrough` turns passthrough off).
    pub passthrough: PassthroughPolicy,
    /// The mount lock ([`lock_mountpoint`]), let go once the mount is up: a mount made
    /// right after this one is unmounted must not find it taken.
    pub mount_lock: Option<Arc<std::fs::File>>,
}

/// The faults of this daemon, for its state file (`crate::fault`).
static FAULTS: FaultLog = FaultLog::new();

/// Where a background daemon logs (`crate::logging`): `--log-file`, else journald, else syslog,
/// else the log file in the state folder. Decided before forking, so that a log that
/// cannot be opened is refused on the command line.
fn background_log(options: &DaemonOptions) -> Result<(Option<std::fs::File>, String), String> {
    let open = |path: &Path| {
        logging::open_log_file(path)
            .map(|f| (Some(f), path.display().to_string()))
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))
    };
    if let Some(path) = &options.log_file {
        return open(path);
    }
    if logging::journal_socket().is_some() {
        return Ok((None, "journald".into()));
    }
    if logging::syslog_socket().is_some() {
        return Ok((None, "syslog".into()));
    }
    match logging::default_log_file() {
        Some(path) => open(&path).map_err(|e| format!("{e}; pass --log-file FILE")),
        None => Err("no folder for the log (neither XDG_RUNTIME_DIR nor HOME is set); pass --log-file FILE or --foreground".into()),
    }
}

/// Whether `name` is an executable file in a folder of `$PATH`.
fn in_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Whether a mount with these options gets `auto_unmount` (see the module doc).
pub fn wants_auto_unmount(allow_other: bool) -> bool {
    allow_other && in_path("fusermount3")
}

fn session_config(allow_other: bool, writable: bool, version: &str) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(fs_source(version)),
        MountOption::Subtype(FS_NAME.into()),
        if writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
    ];
    if allow_other {
        config
            .mount_options
            .push(MountOption::CUSTOM("allow_other".into()));
        config.acl = SessionACL::All;
        if wants_auto_unmount(allow_other) {
            config.mount_options.push(MountOption::AutoUnmount);
        }
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    config.n_threads = Some(threads);
    config.clone_fd = true;
    config
}

/// Mounts `tree` on `mountpoint` and serves it until unmounted or signalled.
/// Backgrounds itself unless `options.foreground`; returns once the mount answers.
pub fn mount(tree: MergedTree, mountpoint: &Path, options: &DaemonOptions) -> Result<(), String> {
    // No thread exists yet: the FUSE threads will share one heap (memory per entry).
    sys::single_malloc_arena();
    let mut options = options.clone();
    if options.foreground {
        options.description.log = "stderr".into();
        logging::init(&options.log_filter, Destination::Stderr, false, &FAULTS);
        return serve(tree, mountpoint, &options, None);
    }
    let (log, shown) = background_log(&options)?;
    options.description.log = shown;
    let options = &options;
    let (mut ready_rx, ready_tx) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        0 => {
            drop(ready_rx);
            sys::setsid();
            // From here on the daemon logs to its log (stderr is the log file, or
            // /dev/null beside journald); start-up errors reach the user through the
            // readiness pipe.
            let _ = sys::detach_stdio(log.as_ref());
            let destination = match (&log, logging::journal_socket(), logging::syslog_socket()) {
                (None, Some(socket), _) => Destination::Journal(socket),
                (None, None, Some(socket)) => Destination::Syslog(socket),
                _ => Destination::Stderr,
            };
            let shared = options.log_file.is_none();
            logging::init(&options.log_filter, destination, shared, &FAULTS);
            let outcome = serve_detached(tree, mountpoint, options, ready_tx);
            std::process::exit(if outcome.is_ok() { 0 } else { 1 });
        }
        _child => {
            drop(ready_tx);
            let mut answer = String::new();
            let _ = ready_rx.read_to_string(&mut answer);
            match answer.strip_prefix("ready") {
                Some(_) => Ok(()),
                None if answer.trim().is_empty() => {
                    Err("the daemon exited before the mount was ready".into())
                }
                None => Err(answer.trim().to_string()),
            }
        }
    }
}

fn serve_detached(
    tree: MergedTree,
    mountpoint: &Path,
    options: &DaemonOptions,
    ready: std::io::PipeWriter,
) -> Result<(), String> {
    let mut ready = Some(ready);
    let result = serve(tree, mountpoint, options, Some(&mut ready));
    if let (Err(e), Some(mut pipe)) = (&result, ready.take()) {
        let _ = pipe.write_all(e.as_bytes());
    }
    result
}

/// Serves until unmounted; a scratch upper layer goes with the mount.
fn serve(
    tree: MergedTree,
    mountpoint: &Path,
    options: &DaemonOptions,
    ready: Option<&mut Option<std::io::PipeWriter>>,
) -> Result<(), String> {
    let result = serve_until_unmounted(tree, mountpoint, options, ready);
    scratch::remove(options.scratch_upper.as_deref());
    result
}

fn serve_until_unmounted(
    tree: MergedTree,
    mountpoint: &Path,
    options: &DaemonOptions,
    ready: Option<&mut Option<std::io::PipeWriter>>,
) -> Result<(), String> {
    // Signals are blocked before any thread exists, so only the waiter below takes them.
    let signals = sys::block_termination_signals();
    let version = options.description.version.clone();
    let config = session_config(options.allow_other, options.writable, &version);
    match sys::raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::debug!(error = %e, "cannot raise the open files limit"),
    }
    let connection: Arc<OnceLock<OwnedFd>> = Arc::default();
    let state_file: Arc<OnceLock<Arc<StateFile>>> = Arc::default();
    let auto_unmount = config.mount_options.contains(&MountOption::AutoUnmount);
    let fs = BuildFs::new(tree, options.passthrough)
        .keep_opendir(auto_unmount)
        .on_destroy({
            let point = mountpoint.to_path_buf();
            let (connection, state_file) = (connection.clone(), state_file.clone());
            let scratch = options.scratch_upper.clone();
            move || leave_if_unmounted(&point, connection.get(), state_file.get(), scratch)
        });
    let stats = fs.stats();
    // Root mounts with mount(2) itself, so that the type is `fuse.rootfs-mount` (fuser's
    // mount(2) says `fuse`); fusermount3 (auto_unmount, other users) sets the subtype.
    let direct = sys::euid() == 0 && !auto_unmount;
    let session = if direct {
        mount_direct(fs, mountpoint, &config, &version, options)
    } else {
        Session::new(fs, mountpoint, &config)
            .map_err(|e| format!("mounting on {}: {e}", mountpoint.display()))
    };
    let mut session = session.inspect_err(|e| notify::failed(e, libc::EIO))?;
    if let Ok(fd) = session.as_fd().try_clone_to_owned() {
        let _ = connection.set(fd);
    }
    raise_readahead(mountpoint);
    let mut unmounter = session.unmount_callable();
    let state = publish_state(mountpoint, options, stats);
    if let Some(file) = &state {
        let _ = state_file.set(file.clone());
    }
    let shown = mountpoint.display().to_string();
    let point = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let signal = sys::wait_for_signal(&signals);
            tracing::info!(signal, mountpoint = %shown, "unmounting on signal");
            notify::stopping(&format!("unmounting {shown}"));
            // fuser leaves an auto_unmount mount to fusermount3, which unmounts only
            // once the daemon is dead, and knows nothing of a mount made with mount(2)
            // here: a live daemon unmounts those itself.
            let result = if auto_unmount || direct {
                unmount_on_signal(&point)
            } else {
                unmounter.unmount().map_err(|e| e.to_string())
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "unmount failed");
            }
        })
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    if let Some(lock) = &options.mount_lock {
        // A flock belongs to the open file: this lets it go for the parent too.
        let _ = lock.unlock();
    }
    announce_when_answering(mountpoint, &version, ready.and_then(Option::take))?;
    let served = session.run();
    crate::remote::flush();
    if let Some(state) = state {
        state.remove();
    }
    if served.is_err() && direct && !connection.get().is_some_and(sys::fuse_connection_closed) {
        // Our own mount(2): nothing in fuser unmounts it when the session fails.
        let _ = sys::unmount(mountpoint, true);
    }
    served.map_err(|e| format!("serving {}: {e}", mountpoint.display()))?;
    notify::stopping(&format!("unmounted {}", mountpoint.display()));
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

/// Unmounts our own mount when told to stop. A busy mount (a reader has a file open or
/// its working folder there, or the readiness probe is still listing the root) is tried
/// again for two seconds, then detached (`umount -l`): a signalled daemon must go away,
/// and files still open keep working until closed.
fn unmount_on_signal(point: &Path) -> Result<(), String> {
    for _ in 0..20 {
        match sys::unmount(point, false) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Ok(()) => return Ok(()),
            // Not root (fusermount3), or not mounted any more: the general path says why.
            Err(_) => return umount(point, false),
        }
    }
    tracing::warn!(mountpoint = %point.display(), "still busy after 2 s: detaching it; open files keep working until closed");
    umount(point, true)
}

/// Mounts with mount(2) (see `sys::mount_fuse`) and starts the session on that
/// connection; unmounts again when the session cannot start.
fn mount_direct(
    fs: BuildFs,
    mountpoint: &Path,
    config: &Config,
    version: &str,
    options: &DaemonOptions,
) -> Result<Session<BuildFs>, String> {
    let fd = sys::mount_fuse(&sys::FuseMount {
        mountpoint,
        source: &fs_source(version),
        fstype: FS_TYPE,
        read_only: !options.writable,
        allow_other: options.allow_other,
    })
    .map_err(|e| format!("mounting on {}: {e}", mountpoint.display()))?;
    Session::from_fd(fs, fd, config.acl, config.clone()).map_err(|e| {
        let _ = sys::unmount(mountpoint, true);
        format!("starting the FUSE session on {}: {e}", mountpoint.display())
    })
}

/// Tells the waiting parent (the readiness pipe) and systemd (`READY=1`) that the mount
/// is there, once a listing of its root has been answered by the session, which starts
/// right after this returns. A root that does not answer is unmounted and the error
/// reported instead.
fn announce_when_answering(
    mountpoint: &Path,
    version: &str,
    pipe: Option<std::io::PipeWriter>,
) -> Result<(), String> {
    let point = mountpoint.to_path_buf();
    let status = format!("serving Kubernetes {version} on {}", point.display());
    std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || {
            let answered = std::fs::read_dir(&point).and_then(|mut d| d.next().transpose());
            match answered {
                Ok(_) => {
                    tracing::info!(mountpoint = %point.display(), "mounted");
                    if let Some(advice) = host_idle::advice() {
                        tracing::info!("{advice}");
                    }
                    if let Some(mut pipe) = pipe {
                        let _ = pipe.write_all(b"ready\n");
                    }
                    notify::ready(&status);
                }
                Err(e) => {
                    let message = format!("the mount on {} does not answer: {e}", point.display());
                    tracing::error!("{message}");
                    notify::failed(&message, e.raw_os_error().unwrap_or(libc::EIO));
                    if let Some(mut pipe) = pipe {
                        let _ = pipe.write_all(message.as_bytes());
                    }
                    let _ = sys::unmount(&point, true);
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("starting the readiness thread: {e}"))
}

/// Ends the daemon when the session ended because the mount is gone (`umount`,
/// `rootfs-mount umount`: the kernel closed the FUSE `connection`), doing what `serve`
/// does after the session (state file, scratch upper layer). fuser 0.18.0 unmounts its
/// mountpoint by path as the session ends, even when the kernel has unmounted it
/// already (its `is_mounted` check is inverted, cberner/fuser#703): by then the path
/// may hold a newer mount (an unmount followed at once by a new mount, which may even
/// get the same device number), and fuser would take it down. Exiting here, before
/// fuser gets there, leaves that mount alone. While the connection is open (the session
/// failed), fuser unmounts our mount as it should.
fn leave_if_unmounted(
    mountpoint: &Path,
    connection: Option<&OwnedFd>,
    state: Option<&Arc<StateFile>>,
    scratch_upper: Option<PathBuf>,
) {
    if connection.is_some_and(sys::fuse_connection_closed) {
        if let Some(state) = state {
            state.remove();
        }
        scratch::remove(scratch_upper.as_deref());
        crate::remote::flush();
        tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
        std::process::exit(0);
    }
}

/// Writes the state file of this mount and starts the thread that refreshes its
/// counters. A mount without a state file still serves: the failure is logged.
fn publish_state(
    mountpoint: &Path,
    options: &DaemonOptions,
    stats: std::sync::Arc<crate::fuse::Stats>,
) -> Option<std::sync::Arc<StateFile>> {
    let file = match StateFile::create(mountpoint, options.description.clone()) {
        Ok(f) => std::sync::Arc::new(f),
        Err(e) => {
            tracing::warn!(error = %e, "no state file: `rootfs-mount status` will not list this mount");
            return None;
        }
    };
    tracing::debug!(path = %file.path().display(), "state file written");
    let refreshed = file.clone();
    let spawned = std::thread::Builder::new()
        .name("state".into())
        .spawn(move || loop {
            std::thread::sleep(state::REFRESH);
            let indexing = crate::archive::progress::snapshot();
            if let Err(e) = refreshed.refresh(stats.snapshot(), FAULTS.snapshot(), indexing) {
                tracing::debug!(error = %e, "refreshing the state file");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no state refresh thread: counters in `status` stay at zero");
    }
    Some(file)
}

/// Sequential reads served by the daemon come in requests of the kernel's readahead
/// window (128 KiB by default); a 1 MiB window (the largest FUSE request) cuts the round
/// trips by 8. Best effort: only root may write the knob, and passthrough reads do not
/// need it (they read ahead on the backing file).
fn raise_readahead(mountpoint: &Path) {
    const READ_AHEAD_KB: &str = "1024";
    let Some(device) = mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == mountpoint)
        .map(|m| m.device)
    else {
        return;
    };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    match std::fs::write(&knob, READ_AHEAD_KB) {
        Ok(()) => tracing::debug!(%knob, kb = READ_AHEAD_KB, "raised the readahead window"),
        Err(e) => tracing::debug!(%knob, error = %e, "readahead window left as is"),
    }
}
