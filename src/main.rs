//! `rootfs-mount`: parse, then mount, unmount or show status.

mod cli;

use std::process::ExitCode;

use cli::{cache_dir, CacheCommand, Cli, Command, FetchArgs};
use rootfs_mount::daemon::{self, DaemonOptions};
use std::sync::Arc;

use rootfs_mount::fetch::{self, FetchOptions, ImageOptions};
use rootfs_mount::fuse::passthrough::PassthroughPolicy;
use rootfs_mount::layout::{self, Upper};
use rootfs_mount::state::MountDescription;
use rootfs_mount::tree::MergedTree;
use rootfs_mount::upper::UpperDir;
use rootfs_mount::versions::KubeVersion;

/// `rootfs-mount fetch`: resolves the version like a mount does, then fills the cache.
fn fetch(args: &FetchArgs) -> Result<(), String> {
    let version = KubeVersion::parse(&args.k8s)?;
    let arches = args.arches()?;
    let cache = args.cache()?;
    let contexts = args
        .contexts
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .map_err(|e| format!("--contexts: {e}"))?;
    let (facts, sources) = layout::load_facts(contexts.as_deref())?;
    let profile = facts.profile(&version, args.cri.as_deref(), &args.cni)?;
    for url in &args.mirrors {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "bad --mirror {}: expected an http:// or https:// URL",
                rootfs_mount::render::quote(url)
            ));
        }
    }
    let entries = layout::cache_entries(&sources, &profile, &arches)?;
    let options = FetchOptions {
        cache: cache.clone(),
        mirrors: args.mirrors.clone(),
        no_upstream: args.no_upstream,
        allow_unpinned: args.allow_unpinned,
        print_urls: args.print_urls,
        jobs: args.jobs,
        timeout: args.timeout,
        attempts: args.retries.saturating_add(1),
        image: ImageOptions {
            images: args.images,
            image_mirrors: args.image_mirrors.clone(),
        },
    };
    let summary = fetch::fetch(&entries, &options)?;
    if !summary.is_empty() {
        println!("{summary}");
    }
    if args.images && !args.print_urls {
        let params = layout::MountParams {
            version: version.clone(),
            cri: Some(profile.cri.clone()),
            cni: args.cni.clone(),
            arches: arches.clone(),
            cache: cache.clone(),
            contexts: contexts.clone(),
            registry_domain: "sea.hub:5000".into(),
            sealer: args.sealer.clone(),
            registry_data: None,
            index_dir: None,
            allow_missing: true,
            upper: layout::Upper::None,
        };
        fetch::pull_image_list(
            &layout::image_list(&params)?,
            &arches,
            &options.image,
            &cache.join("registry"),
        )?;
    }
    Ok(())
}

fn cache_command(command: &CacheCommand) -> Result<(), String> {
    let out = match command {
        CacheCommand::Publish { dir, cache } => {
            fetch::cache::publish(&cache_dir(cache.as_deref())?, dir)?
        }
        CacheCommand::Verify { cache } => fetch::cache::verify(&cache_dir(cache.as_deref())?)?,
        CacheCommand::Ls { cache, contexts } => {
            let (facts, sources) = layout::load_facts(contexts.as_deref())?;
            fetch::cache::ls(&cache_dir(cache.as_deref())?, &facts, &sources)?
        }
        CacheCommand::Gc {
            cache,
            contexts,
            index_dir,
            keep,
            dry_run,
        } => {
            let (facts, sources) = layout::load_facts(contexts.as_deref())?;
            let cache = cache_dir(cache.as_deref())?;
            let index_dir = match index_dir {
                Some(dir) => std::path::absolute(dir).map_err(|e| format!("--index-dir: {e}"))?,
                None => cache.join("index"),
            };
            let keep = keep
                .iter()
                .map(|v| KubeVersion::parse(v))
                .collect::<Result<Vec<_>, _>>()?;
            fetch::cache::gc(&cache, &index_dir, &keep, *dry_run, &facts, &sources)?
        }
    };
    print!("{out}");
    if !out.ends_with('\n') && !out.is_empty() {
        println!();
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Some(Command::Umount { mountpoint, lazy }) => return daemon::umount(&mountpoint, lazy),
        Some(Command::Status { mountpoint, json }) => {
            print!("{}", daemon::status(mountpoint.as_deref(), json)?);
            return Ok(());
        }
        Some(Command::Fetch(args)) => return fetch(&args),
        Some(Command::Cache(command)) => return cache_command(&command),
        Some(Command::Generate(what)) => return cli::generate(&what),
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
        registry_domain: params.registry_domain.clone(),
        index_dir: params.index_dir(),
        cache: params.cache.clone(),
        contexts: params.contexts.clone(),
        registry_data: params.registry_dir(),
        upper: upper_dir.clone(),
        scratch_upper: scratch.is_some(),
        allow_other: args.allow_other,
        auto_unmount: daemon::wants_auto_unmount(args.allow_other),
        log: String::new(),
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
