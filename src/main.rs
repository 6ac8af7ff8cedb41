//! `rootfs-mount`: parse, then mount, unmount or show status.

mod cli;

use std::process::ExitCode;

use cli::{Cli, Command};
use rootfs_mount::daemon::{self, DaemonOptions};
use std::sync::Arc;

use rootfs_mount::fuse::passthrough::PassthroughPolicy;
use rootfs_mount::layout::{self, Upper};
use rootfs_mount::state::MountDescription;
use rootfs_mount::tree::MergedTree;
use rootfs_mount::upper::UpperDir;

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Some(Command::Umount { mountpoint, lazy }) => return daemon::umount(&mountpoint, lazy),
        Some(Command::Status { mountpoint }) => {
            print!("{}", daemon::status(mountpoint.as_deref())?);
            return Ok(());
        }
        None => {}
    }
    let args = cli.mount;
    let params = args.params()?;
    params.check_upper()?;
    let mountpoint = args.mountpoint_and_source().0;
    let mut roots = params.source_roots();
    if let Upper::Kept(dir) = &params.upper {
        roots.push(dir.clone());
    }
    let mountpoint = daemon::check_mountpoint(&mountpoint, &roots, args.force)?;
    let build = layout::plan(&params)?;
    daemon::check_fuse_device()?;
    let (upper_dir, scratch) = match &params.upper {
        Upper::None => (None, None),
        Upper::Kept(dir) => (Some(dir.clone()), None),
        Upper::Scratch => {
            let dir = daemon::make_scratch_upper()?;
            (Some(dir.clone()), Some(dir))
        }
    };
    let description = MountDescription {
        version: build.profile.version.to_string(),
        cri: build.profile.cri.clone(),
        cni: build
            .profile
            .cni
            .as_ref()
            .map_or_else(|| "none".to_string(), |(name, _)| name.clone()),
        arches: params.arches.clone(),
        cache: params.cache.clone(),
        contexts: params.contexts.clone(),
        registry_data: params.registry_dir(),
        upper: upper_dir.clone(),
        scratch_upper: scratch.is_some(),
        allow_other: args.allow_other,
        auto_unmount: daemon::wants_auto_unmount(args.allow_other),
    };
    let namespace = match &upper_dir {
        Some(dir) => {
            let upper = UpperDir::open(dir)
                .map_err(|e| format!("cannot use {} as the upper layer: {e}", dir.display()));
            match upper {
                Ok(upper) => build.namespace.with_upper(Arc::new(upper)),
                Err(e) => {
                    daemon::remove_scratch(scratch.as_deref());
                    return Err(e);
                }
            }
        }
        None => build.namespace,
    };
    let tree = MergedTree::new(namespace, params.cache.clone()).map_err(|e| e.to_string())?;
    let options = DaemonOptions {
        foreground: args.foreground,
        allow_other: args.allow_other,
        log_filter: args.log_level.directive().to_string(),
        log_file: args.log_file.clone(),
        writable: upper_dir.is_some(),
        scratch_upper: scratch,
        description,
        passthrough: if args.no_passthrough {
            PassthroughPolicy::Off
        } else {
            PassthroughPolicy::for_roots(&params.source_roots())
        },
    };
    daemon::mount(tree, &mountpoint, &options)
}

fn main() -> ExitCode {
    match cli::parse().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("rootfs-mount: {message}");
            ExitCode::FAILURE
        }
    }
}
