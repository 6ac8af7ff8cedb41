//! `rootfs-mount`: parse, then mount, unmount or show status, or serve the tree without
//! a mount (`render`, `tree`, `pack`, `check`: the logic is in the library's `pack` and
//! `check`; this only wires arguments to it and output to stdout or files).

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use cli::{cache_dir, BuildArgs, CacheCommand, Cli, Command, FetchArgs};
use rootfs_mount::daemon::{self, DaemonOptions};
use rootfs_mount::mounts;
use rootfs_mount::scratch::ScratchUpper;
use std::sync::Arc;

use rootfs_mount::fetch::{self, FetchOptions, ImageOptions};
use rootfs_mount::fuse::passthrough::PassthroughPolicy;
use rootfs_mount::layout::{self, Upper};
use rootfs_mount::remote;
use rootfs_mount::state::MountDescription;
use rootfs_mount::tree::MergedTree;
use rootfs_mount::upper::UpperDir;
use rootfs_mount::versions::KubeVersion;

/// `--contexts DIR` made absolute (the daemon changes its working folder).
fn absolute_contexts(dir: Option<&std::path::Path>) -> Result<Option<std::path::PathBuf>, String> {
    dir.map(std::path::absolute)
        .transpose()
        .map_err(|e| format!("--contexts: {e}"))
}

/// `rootfs-mount fetch`: resolves the version like a mount does, then fills the cache.
/// `rootfs-mount index`: every archive a mount of these parameters reads is indexed by
/// going through the tree as the first reads would (listing `<arch>/bin`, looking up
/// `<arch>/images/registry.tar`), so the layers decide what is an archive. A progress bar
/// on a terminal; the start and end of each build are logged (stderr) either way.
fn index(args: &cli::IndexArgs) -> Result<(), String> {
    use rootfs_mount::tree::ROOT_INO;
    let params = args.params()?;
    rootfs_mount::logging::init(
        "info",
        rootfs_mount::logging::Destination::Stderr,
        false,
        Box::leak(Box::default()),
    );
    let build = layout::plan(&params)?;
    let tree = MergedTree::new(build.namespace, params.cache.clone()).map_err(|e| e.to_string())?;
    let bar = indicatif::ProgressBar::new(100).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}%")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(now) = rootfs_mount::archive::progress::snapshot().first() {
                    let eta = now
                        .eta_seconds
                        .map_or_else(String::new, |s| format!(", {s}s left"));
                    bar.set_message(format!("indexing {}{eta}", now.file));
                    bar.set_position(now.percent);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let mut faults = Vec::new();
    for arch in &params.arches {
        let Ok((arch_ino, _)) = tree.lookup(ROOT_INO, arch.as_ref()) else {
            continue;
        };
        if let Ok((bin, _)) = tree.lookup(arch_ino, "bin".as_ref()) {
            if let Err(e) = tree.listing(bin, 0) {
                faults.push(format!("{arch}/bin: {e}"));
            }
            tree.listing_done(bin);
        }
        if let Ok((images, _)) = tree.lookup(arch_ino, "images".as_ref()) {
            match tree.lookup(images, "registry.tar".as_ref()) {
                Err(e) if e.errno != libc::ENOENT => {
                    faults.push(format!("{arch}/images/registry.tar: {e}"))
                }
                _ => {}
            }
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.join();
    bar.finish_and_clear();
    if !faults.is_empty() {
        return Err(format!(
            "some archives could not be indexed: {}",
            faults.join("; ")
        ));
    }
    println!("seek indexes are in {}", params.index_dir().display());
    Ok(())
}

fn fetch(args: &FetchArgs) -> Result<(), String> {
    let version = KubeVersion::parse(&args.k8s)?;
    let arches = args.arches()?;
    let cache = args.cache()?;
    let contexts = absolute_contexts(args.contexts.as_deref())?;
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
            sealer: args.sealer.clone(),
            values: args.values.overrides()?,
            ..layout::MountParams::rendering(
                version.clone(),
                Some(profile.cri.clone()),
                args.cni.clone(),
                contexts.clone(),
            )
        };
        let images = layout::image_list(&params)?;
        if args.no_upstream {
            // Air-gapped: every image's registry must have an --image-mirror.
            for image in &images {
                let host = image.split('/').next().unwrap_or_default();
                if !options.image.image_mirrors.iter().any(|(h, _)| h == host) {
                    return Err(format!(
                        "--no-upstream: no --image-mirror for {host} (needed by {image}); add --image-mirror {host}=URL"
                    ));
                }
            }
        }
        fetch::pull_image_list(&images, &arches, &options.image, &cache.join("registry"))?;
    }
    Ok(())
}

fn print_values(args: &cli::BuildArgs) -> Result<(), String> {
    let params = args.params(Upper::None)?;
    let values = layout::values(&params)?;
    let specs = layout::value_specs(params.contexts.as_deref())?;
    let mut out = String::new();
    for (key, spec) in specs.keys() {
        out.push_str(&format!("# {}\n", spec.help));
        match values.get(key) {
            Some(rootfs_mount::values::Effective::Text(text)) => {
                out.push_str(&format!("{key}: {}\n", yaml_scalar(text)))
            }
            Some(rootfs_mount::values::Effective::Args(args)) if args.is_empty() => {
                out.push_str(&format!("{key}: {{}}\n"))
            }
            Some(rootfs_mount::values::Effective::Args(args)) => {
                out.push_str(&format!("{key}:\n"));
                for (flag, value) in args {
                    out.push_str(&format!("  {flag}: {}\n", yaml_scalar(value)));
                }
            }
            None => {}
        }
    }
    print!("{out}");
    Ok(())
}

/// A YAML double-quoted scalar.
fn yaml_scalar(text: &str) -> String {
    format!("{text:?}")
}

fn cache_command(command: &CacheCommand) -> Result<(), String> {
    let out = match command {
        CacheCommand::Publish {
            dir,
            cache,
            s3_endpoint,
        } => {
            let cache = cache_dir(cache.as_deref())?;
            match remote::Location::parse(&dir.to_string_lossy()) {
                Some(Ok(location @ remote::Location::S3 { .. })) => remote::publish::to_store(
                    &cache,
                    location,
                    s3_endpoint.as_deref(),
                    remote::DEFAULT_TIMEOUT,
                )?,
                Some(Ok(_)) => {
                    return Err(
                        "an HTTP mirror is published into a folder its server serves: `rootfs-mount cache publish DIR`".into(),
                    )
                }
                Some(Err(e)) => return Err(e),
                None => {
                    let done = fetch::cache::publish(&cache, dir)?;
                    let extras = remote::publish::mirror_extras(&cache, dir)?;
                    format!("{done}; {extras}")
                }
            }
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

/// An `--upper` folder last mounted with other parameters holds files written for them:
/// say which rendered files it shadows (or refuse with `--strict`), then record the
/// parameters of this mount on it.
fn check_upper_parameters(
    dir: &std::path::Path,
    build: &layout::BuildLayout,
    strict: bool,
) -> Result<(), String> {
    use rootfs_mount::layers::Source;
    use rootfs_mount::upper::params;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot use {} as the upper layer: {e}", dir.display()))?;
    if let Ok(Some(old)) = params::recorded(dir) {
        let changes = params::differences(&old, &build.parameters);
        if !changes.is_empty() {
            let shadowed: Vec<String> = params::files(dir)
                .into_iter()
                .filter(|rel| {
                    matches!(
                        build.namespace.resolve_path(rel),
                        Ok(Some(node)) if matches!(node.entry.source, Source::Rendered(_))
                    )
                })
                .map(|rel| rel.display().to_string())
                .collect();
            let mut message = format!(
                "--upper {} was last mounted with other parameters ({})",
                dir.display(),
                changes.join(", ")
            );
            if shadowed.is_empty() {
                message.push_str("; it shadows no rendered file");
            } else {
                message.push_str(&format!(
                    "; it shadows rendered files with bytes written then: {}",
                    shadowed.join(", ")
                ));
            }
            if strict {
                return Err(format!(
                    "{message}; mount without --strict to use it anyway, or use another --upper"
                ));
            }
            eprintln!("rootfs-mount: warning: {message}");
        }
    }
    params::record(dir, &build.parameters)
        .map_err(|e| format!("cannot record the parameters on {}: {e}", dir.display()))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Some(Command::Umount { mountpoint, lazy }) => return mounts::umount(&mountpoint, lazy),
        Some(Command::Status { mountpoint, json }) => {
            print!("{}", mounts::status(mountpoint.as_deref(), json)?);
            return Ok(());
        }
        Some(Command::Render { paths, build }) => return render(&build, &paths),
        Some(Command::Tree { long, json, build }) => return tree(&build, long, json),
        Some(Command::Pack {
            output,
            format,
            build,
        }) => return pack(&build, &output, &format),
        Some(Command::Check { json, build }) => return check(&build, json),
        Some(Command::Fetch(args)) => return fetch(&args),
        Some(Command::Cache(command)) => return cache_command(&command),
        Some(Command::Generate(what)) => return cli::generate(&what),
        Some(Command::Index(args)) => return index(&args),
        Some(Command::Values(args)) => return print_values(&args),
        Some(Command::Contexts(cli::ContextsCommand::Export { dir })) => {
            return rootfs_mount::layers::export_contexts(&dir).map(|n| {
                println!("{n} files written to {}", dir.display());
            })
        }
        None => {}
    }
    let args = cli.mount;
    let params = args.params()?;
    params.check_upper()?;
    let warnings = check_not_ignored(&args, &params)?;
    let mountpoint = args.mountpoint_and_source().0;
    let mut roots = params.source_roots();
    if let Upper::Kept(dir) = &params.upper {
        roots.push(dir.clone());
    }
    // Held until the mount is up (`DaemonOptions::mount_lock`).
    let mut lock = mounts::lock_mountpoint(&mountpoint)?;
    let mut checked = mounts::check_mountpoint(&mountpoint, &roots, args.force)?;
    if lock.is_none() {
        // A stale mount that --force just cleared: lock, and check again under the lock.
        lock = mounts::lock_mountpoint(&mountpoint)?;
        checked = mounts::check_mountpoint(&mountpoint, &roots, false)?;
    }
    let mountpoint = checked;
    let build = layout::plan(&params)?;
    mounts::check_fuse_device()?;
    let scratch_owner = match &params.upper {
        Upper::Scratch => Some(ScratchUpper::create()?),
        _ => None,
    };
    let scratch = scratch_owner.as_ref().map(|s| s.path().to_path_buf());
    let upper_dir = match &params.upper {
        Upper::None => None,
        Upper::Kept(dir) => Some(dir.clone()),
        Upper::Scratch => scratch.clone(),
    };
    // Until the mount is up, `scratch_owner` removes the scratch folder on every refusal
    // (the mount never came up, so nothing else will); then the daemon owns it.
    let mounted = (|| {
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
        if let Upper::Kept(dir) = &params.upper {
            check_upper_parameters(dir, &build, args.strict)?;
        }
        let namespace = match &upper_dir {
            Some(dir) => {
                let upper = UpperDir::open(dir)
                    .map_err(|e| format!("cannot use {} as the upper layer: {e}", dir.display()))?;
                build.namespace.with_upper(Arc::new(upper))
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
            scratch_upper: scratch.clone(),
            description,
            passthrough: if args.no_passthrough {
                PassthroughPolicy::Off
            } else {
                // The upper folder holds backing files too (writable mounts).
                let mut roots = params.source_roots();
                roots.extend(upper_dir.clone());
                PassthroughPolicy::for_roots(&roots, args.passthrough_min)
            },
            mount_lock: lock.map(Arc::new),
        };
        // Said once every check passed, so that a refusal stays one line.
        for warning in warnings {
            eprintln!("rootfs-mount: warning: {warning}");
        }
        daemon::mount(tree, &mountpoint, &options)
    })();
    if mounted.is_ok() {
        if let Some(owner) = scratch_owner {
            owner.hand_over();
        }
    }
    mounted
}

/// Options that would have no effect are refused rather than silently ignored, and a
/// folder that is not there is said (a mistyped `--cache` with `--allow-missing` would
/// otherwise mount an empty tree without a word).
fn check_not_ignored(
    args: &cli::MountArgs,
    params: &layout::MountParams,
) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    if args.foreground && args.log_file.is_some() {
        return Err(
            "-f logs to stderr, --log-file is for a backgrounded daemon: drop one of them".into(),
        );
    }
    if let Some(dir) = &params.registry_data {
        if !dir.exists() {
            let message = format!("--registry-data {} does not exist", dir.display());
            if !params.allow_missing {
                return Err(format!(
                    "{message}; create it, or pass --allow-missing to mount without it"
                ));
            }
            warnings.push(format!("{message}; rootfs/registry is empty"));
        }
    }
    if params.allow_missing && !params.cache.exists() {
        warnings.push(format!(
            "the cache folder {} does not exist; mounting without it (--allow-missing)",
            params.cache.display()
        ));
    }
    Ok(warnings)
}

/// The tree of `build`'s parameters, planned as a read-only mount would be.
fn plan_tree(build: &BuildArgs) -> Result<(layout::MountParams, layout::BuildLayout), String> {
    let params = build.params(Upper::None)?;
    let layout = layout::plan(&params)?;
    Ok((params, layout))
}

/// `render PATH...`: every path is resolved before anything is printed.
fn render(build: &BuildArgs, paths: &[String]) -> Result<(), String> {
    use rootfs_mount::layers::EntryKind;
    use rootfs_mount::pack::{content::ContentReader, walk};
    let (_, layout) = plan_tree(build)?;
    let mut files = Vec::new();
    for typed in paths {
        let (path, node) = walk::resolve(&layout.namespace, typed)?;
        match node.entry.kind {
            EntryKind::File => files.push((path, node)),
            EntryKind::Dir => return Err(format!("{typed} is a folder, not a file")),
            EntryKind::Symlink => return Err(format!("{typed} is a symlink, not a file")),
            EntryKind::Fifo | EntryKind::Socket => {
                return Err(format!("{typed} is a fifo or socket, not a file"))
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for (path, node) in files {
        let mut reader = ContentReader::open(&path, &node.entry)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match std::io::copy(&mut reader, &mut out) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.map_err(|e| format!("{}: {e}", path.display()))?,
        };
    }
    until_reader_left(std::io::Write::flush(&mut out))
}

/// `tree [--long] [--json]`.
fn tree(build: &BuildArgs, long: bool, json: bool) -> Result<(), String> {
    use rootfs_mount::pack::listing;
    let (_, layout) = plan_tree(build)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut faults = Vec::new();
    let written = if json {
        let (entries, f) = listing::entries(&layout.namespace).map_err(|e| e.to_string())?;
        faults = f;
        serde_json::to_writer_pretty(&mut out, &entries)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        listing::write_text(&layout.namespace, long, &mut out).map(|f| faults = f)
    };
    until_reader_left(written.and_then(|()| std::io::Write::flush(&mut out)))?;
    // Faults hit only their entries: each is said, the rest was listed, the exit fails.
    for (path, e) in &faults {
        eprintln!("rootfs-mount: {}: {e}", path.display());
    }
    match faults.len() {
        0 => Ok(()),
        n => Err(format!("{n} entries could not be read; the rest is listed")),
    }
}

/// A reader that went away (`tree | head`) ends the output quietly, as SIGPIPE ends
/// other tools; any other error is one line.
fn until_reader_left(written: std::io::Result<()>) -> Result<(), String> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| e.to_string()),
    }
}

/// `pack -o OUT [--format tar|oci]`.
fn pack(build: &BuildArgs, output: &std::path::Path, format: &str) -> Result<(), String> {
    use rootfs_mount::pack::{self, oci_layout, AtomicFile};
    let (params, layout) = plan_tree(build)?;
    if output.as_os_str() != "-" {
        pack::check_output(&params, output)?;
    }
    if format == "oci" {
        if output.as_os_str() == "-" {
            return Err("--format oci writes a folder: name it with -o DIR".into());
        }
        let kubefile = {
            let (path, node) = pack::walk::resolve(&layout.namespace, "rootfs/Kubefile")?;
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut pack::content::ContentReader::open(&path, &node.entry)
                    .map_err(|e| format!("rootfs/Kubefile: {e}"))?,
                &mut text,
            )
            .map_err(|e| format!("rootfs/Kubefile: {e}"))?;
            oci_layout::Kubefile::parse(&text)
        };
        let ns = Arc::new(layout.namespace);
        return oci_layout::write_layout(&ns, &kubefile, &params.arches, output);
    }
    if output.as_os_str() == "-" {
        return pack::pack_tar(&layout.namespace, std::io::stdout().lock())
            .map(|_| ())
            .map_err(|e| format!("packing to stdout: {e}"));
    }
    let mut file = AtomicFile::create(output)
        .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    pack::pack_tar(&layout.namespace, file.file())
        .and_then(|_| file.commit())
        .map_err(|e| format!("packing {}: {e}", output.display()))
}

/// `check [--json]`: the report on stdout; a failed check exits non-zero.
fn check(build: &BuildArgs, json: bool) -> Result<(), String> {
    let mut params = build.params(Upper::None)?;
    params.allow_missing = true;
    let layout = layout::plan(&params)?;
    let report = rootfs_mount::check::check(&params, &layout)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.text());
    }
    if report.ok {
        Ok(())
    } else {
        Err(format!(
            "check failed: {} problem(s){}",
            report.problems.len(),
            report
                .fix
                .as_ref()
                .map(|f| format!("; fill the cache with: {f}"))
                .unwrap_or_default()
        ))
    }
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
