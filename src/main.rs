//! `rootfs-mount`: parse, then mount or unmount.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use rootfs_mount::daemon::{self, DaemonOptions};
use rootfs_mount::layout;
use rootfs_mount::tree::MergedTree;

fn run(cli: Cli) -> Result<(), String> {
    if let Some(Command::Umount { mountpoint, lazy }) = cli.command {
        return daemon::umount(&mountpoint, lazy);
    }
    let args = cli.mount;
    let params = args.params()?;
    let mountpoint = args.mountpoint.clone().unwrap_or_default();
    let mountpoint = daemon::check_mountpoint(&mountpoint, &params.source_roots())?;
    let build = layout::plan(&params)?;
    daemon::check_fuse_device()?;
    let tree = MergedTree::new(build.namespace, params.cache.clone()).map_err(|e| e.to_string())?;
    let options = DaemonOptions {
        foreground: args.foreground,
        allow_other: args.allow_other,
        log_filter: args.log_level.clone(),
        log_file: args.log_file.clone(),
    };
    daemon::mount(tree, &mountpoint, &options)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("rootfs-mount: {message}");
            ExitCode::FAILURE
        }
    }
}
