//! Command-line interface: clap types and their validation into mount parameters, and
//! the mount(8) helper form (`rootfs-mount SOURCE MOUNTPOINT -o k8s=v1.23.4,...`), which
//! is turned into ordinary options before clap sees it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use rootfs_mount::layout::{MountParams, Upper, KNOWN_ARCHES};
use rootfs_mount::mounts::FS_NAME;
use rootfs_mount::remote::{Location, RemoteOptions};
use rootfs_mount::versions::KubeVersion;

#[derive(Debug, Parser)]
#[command(
    name = "rootfs-mount",
    version,
    about = "Mount the merged build directory of a sealer base ClusterImage, without copying",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub mount: MountArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Unmount a rootfs-mount mount, also a stale one left by a killed daemon.
    Umount {
        mountpoint: PathBuf,
        /// Detach even when files are still open in the mount (umount -l).
        #[arg(long)]
        lazy: bool,
    },
    /// List the live mounts (or one): parameters, pid, uptime, read path, counters and
    /// the last faults.
    Status {
        mountpoint: Option<PathBuf>,
        /// Print JSON (fields in the README, "status --json").
        #[arg(long)]
        json: bool,
    },
    /// Print files of the tree (e.g. rootfs/etc/kubeadm.yml) to stdout, without mounting.
    Render {
        /// Paths in the tree, e.g. rootfs/etc/kubeadm.yml.
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// List the merged tree, sorted, without mounting.
    Tree {
        /// Mode, size, mtime and provenance (user.rootfs.source) of each entry.
        #[arg(long)]
        long: bool,
        /// One JSON array of entries (path, type, mode, size, mtime, target, source).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Write the tree as a deterministic tar (the bytes of `tar --sort=name --owner=0
    /// --group=0 --numeric-owner -cf - -C MOUNT .`) or as an OCI image layout per arch.
    Pack {
        /// Output: a tar file (`-` for stdout), or a new folder with --format oci.
        #[arg(short = 'o', long, value_name = "FILE|DIR")]
        output: PathBuf,
        /// tar, or oci: one image per arch (oci:DIR:amd64, oci:DIR:arm64) with the image
        /// root the Kubefile's COPY lines give.
        #[arg(long, default_value = "tar", value_parser = ["tar", "oci"])]
        format: String,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Check the registry data and the cache before packing: every image of imageList for
    /// every arch with all its blobs, the Kubefile labels against the CRI, missing cache
    /// entries. Exit status 0 only when everything holds.
    Check {
        /// The report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Fill the cache with what a mount of the version needs: from mirrors, then
    /// upstream, every file checked against its published or pinned sha256.
    Fetch(FetchArgs),
    /// The cache as a whole: publish a mirror, verify, list, collect garbage.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Build the gzip seek index of every archive a mount of these parameters reads,
    /// ahead of time (so first reads do not wait; CI can warm a cache with it).
    Index(IndexArgs),
    /// Write the man page or shell completions (scripts/install.sh runs this).
    #[command(hide = true, subcommand)]
    Generate(Generate),
    /// Print the effective values of a mount (contexts/values.yaml with --values and
    /// --set applied), as a YAML file that --values takes.
    Values(BuildArgs),
    /// The contexts embedded in this binary.
    #[command(subcommand)]
    Contexts(ContextsCommand),
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Kubernetes version, e.g. v1.23.4.
    #[arg(long = "k8s", value_name = "VERSION")]
    pub k8s: String,
    /// Container runtime [default: the version's, as for the mount].
    #[arg(long)]
    pub cri: Option<String>,
    /// Architectures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "amd64,arm64")]
    pub arch: Vec<String>,
    /// The cache [default: as for the mount].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Where the indexes go [default: CACHE/index].
    #[arg(long, value_name = "DIR")]
    pub index_dir: Option<PathBuf>,
    /// Contexts folder, as for the mount.
    #[arg(long, value_name = "DIR")]
    pub contexts: Option<PathBuf>,
}

impl IndexArgs {
    /// The parameters of a read-only mount of these archives (nothing needs to be
    /// complete: what is missing is simply not indexed).
    pub fn params(&self) -> Result<MountParams, String> {
        let version = KubeVersion::parse(&self.k8s)?;
        let mut params = MountParams::rendering(
            version,
            self.cri.clone(),
            "none".into(),
            self.contexts.as_deref().map(absolute).transpose()?,
        );
        params.arches = parse_arches(&self.arch)?;
        params.cache = cache_dir(self.cache.as_deref())?;
        if !params.cache.is_dir() {
            return Err(format!(
                "the cache {} does not exist; fill it with `rootfs-mount fetch --k8s {}`",
                params.cache.display(),
                self.k8s
            ));
        }
        params.index_dir = self.index_dir.as_deref().map(absolute).transpose()?;
        Ok(params)
    }
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// The man page, rootfs-mount.1, into DIR (subcommands as rootfs-mount-NAME.1).
    Man { dir: PathBuf },
    /// Completions for SHELL on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Writes what `generate` asks for.
pub fn generate(what: &Generate) -> Result<(), String> {
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let command = command();
            clap_mangen::generate_to(command, dir)
                .map_err(|e| format!("writing the man pages into {}: {e}", dir.display()))
        }
        Generate::Completions { shell } => {
            let mut command = command();
            clap_complete::generate(*shell, &mut command, "rootfs-mount", &mut std::io::stdout());
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ContextsCommand {
    /// Write the embedded contexts (templates, versions.yaml, sealer.yaml, values.yaml,
    /// sources.yaml) into DIR, a new or empty folder, to start a --contexts tree from.
    Export { dir: PathBuf },
}

/// `--values FILE` and `--set KEY=VALUE`: the user's choices of contexts/values.yaml.
#[derive(Debug, Args)]
pub struct ValueArgs {
    /// A YAML file of values (keys of `rootfs-mount values`), applied before --set.
    #[arg(long = "values", value_name = "FILE", help_heading = "Build")]
    pub values_file: Option<PathBuf>,

    /// Set one value, e.g. podSubnet=10.244.0.0/16 or apiServerExtraArgs.v=2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", help_heading = "Build")]
    pub set: Vec<String>,
}

impl ValueArgs {
    /// The overrides in the order they apply: the file's, then each --set.
    pub fn overrides(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        if let Some(file) = &self.values_file {
            let bytes = std::fs::read(file)
                .map_err(|e| format!("cannot read --values {}: {e}", file.display()))?;
            out = rootfs_mount::values::parse_values_file(&bytes)
                .map_err(|e| format!("--values {}: {e}", file.display()))?;
        }
        for pair in &self.set {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "bad --set {}: expected KEY=VALUE",
                    rootfs_mount::render::quote(pair)
                )
            })?;
            out.push((key.trim().to_string(), value.to_string()));
        }
        Ok(out)
    }
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Kubernetes version, e.g. v1.23.4.
    #[arg(long = "k8s", value_name = "VERSION")]
    pub k8s: String,

    /// Container runtime [default: the version's, as for the mount].
    #[arg(long)]
    pub cri: Option<String>,

    /// Architectures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "amd64,arm64")]
    pub arch: Vec<String>,

    /// CNI whose images --images pulls, or `none`.
    #[arg(long, default_value = "calico")]
    pub cni: String,

    /// sealer generation, which decides the lvscare image of the imageList (--images).
    #[arg(long, value_name = "GEN")]
    pub sealer: Option<String>,

    /// Values that change the imageList (cniVersion) for --images.
    #[command(flatten)]
    pub values: ValueArgs,

    /// The cache to fill [default: as for the mount].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Read versions.yaml and sources.yaml from this contexts folder.
    #[arg(long, value_name = "DIR")]
    pub contexts: Option<PathBuf>,

    /// A URL serving the cache layout with a SHA256SUMS at its root; repeatable, tried
    /// in order before upstream.
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,

    /// Never download from upstream (mirrors only).
    #[arg(long)]
    pub no_upstream: bool,

    /// Accept upstream files with no published or pinned sha256, recording the digest
    /// of what was downloaded (trust on first use).
    #[arg(long)]
    pub allow_unpinned: bool,

    /// Print URL -> cache path -> sha256 of every entry instead of downloading.
    #[arg(long)]
    pub print_urls: bool,

    /// Parallel downloads.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,

    /// Connect timeout and longest wait for any answer or byte (30s, 2s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: std::time::Duration,

    /// Retries of a failed request (with backoff) before the next source.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,

    /// Also pull every image of the imageList into CACHE/registry.
    #[arg(long)]
    pub images: bool,

    /// Pull images of registry HOST from URL instead (HOST=URL); repeatable.
    #[arg(long = "image-mirror", value_name = "HOST=URL", value_parser = parse_image_mirror)]
    pub image_mirrors: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Write a mirror folder (the layout plus SHA256SUMS) that `fetch --mirror` can use and
    /// mounts can read (`--cache https://...`), or upload the cache to s3://BUCKET/PREFIX.
    Publish {
        #[arg(value_name = "DIR|s3://BUCKET/PREFIX")]
        dir: PathBuf,
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Endpoint of an S3-compatible store [default: AWS, or AWS_ENDPOINT_URL].
        #[arg(long, value_name = "URL")]
        s3_endpoint: Option<String>,
    },
    /// Re-hash every file recorded in CACHE/SHA256SUMS; non-zero exit on a mismatch.
    Verify {
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
    },
    /// Which versions, CRIs and arches the cache holds completely.
    Ls {
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        contexts: Option<PathBuf>,
    },
    /// Remove what no kept version needs, orphaned seek indexes and stale partial files.
    Gc {
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        contexts: Option<PathBuf>,
        /// Where the seek indexes are [default: CACHE/index].
        #[arg(long, value_name = "DIR")]
        index_dir: Option<PathBuf>,
        /// A version to keep; repeatable [default: every version in CACHE/kube].
        #[arg(long, value_name = "VERSION")]
        keep: Vec<String>,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `30s`, `2s`, `500ms`, `1m`, or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 30s, 500ms, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "bad duration {text:?}: expected e.g. 30s, 500ms, 2m"
            ))
        }
    };
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(format!("duration {text:?} out of range (1ms to 24h)"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// `HOST=URL`.
fn parse_image_mirror(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((host, url))
            if !host.is_empty() && (url.starts_with("http://") || url.starts_with("https://")) =>
        {
            Ok((host.to_string(), url.to_string()))
        }
        _ => Err(format!(
            "bad --image-mirror {text:?}: expected HOST=URL, e.g. docker.io=http://127.0.0.1:5000"
        )),
    }
}

impl FetchArgs {
    /// The cache folder, absolute.
    pub fn cache(&self) -> Result<PathBuf, String> {
        cache_dir(self.cache.as_deref())
    }

    pub fn arches(&self) -> Result<Vec<String>, String> {
        parse_arches(&self.arch)
    }
}

/// `--cache DIR` or the default, absolute.
pub fn cache_dir(cache: Option<&Path>) -> Result<PathBuf, String> {
    absolute(&cache.map(Path::to_path_buf).unwrap_or_else(default_cache))
}

/// Validated, deduplicated `--arch` values.
fn parse_arches(list: &[String]) -> Result<Vec<String>, String> {
    let mut arches: Vec<String> = Vec::new();
    for arch in list {
        let arch = arch.trim();
        if !KNOWN_ARCHES.contains(&arch) {
            return Err(format!(
                "unknown arch {arch:?}: expected {}",
                KNOWN_ARCHES.join(" or ")
            ));
        }
        if !arches.iter().any(|a| a == arch) {
            arches.push(arch.to_string());
        }
    }
    Ok(arches)
}

/// What the tree is built from: the options a mount and `render`, `tree`, `pack` and
/// `check` share.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Kubernetes version, e.g. v1.23.4 (a mount also takes the source `rootfs-mount:VERSION`).
    #[arg(long = "k8s", value_name = "VERSION", help_heading = "Build")]
    pub k8s: Option<String>,

    /// Container runtime: docker or containerd [default: docker below v1.24.0, containerd from v1.24.0].
    #[arg(long, help_heading = "Build")]
    pub cri: Option<String>,

    /// CNI context, or `none`.
    #[arg(long, default_value = "calico", help_heading = "Build")]
    pub cni: String,

    /// Architectures to present, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "amd64,arm64",
        help_heading = "Build"
    )]
    pub arch: Vec<String>,

    /// Private registry the image's kubeadm config points at.
    #[arg(long, default_value = "sea.hub:5000", help_heading = "Build")]
    pub registry_domain: String,

    #[command(flatten)]
    pub values: ValueArgs,

    /// sealer generation the image is built for: v0.9 (sealer v0.9.2 to v0.11.0) or v0.8
    /// (sealer v0.8.6) [default: v0.9].
    #[arg(long, value_name = "GEN", help_heading = "Build")]
    pub sealer: Option<String>,

    /// OSS download cache [default: $XDG_CACHE_HOME/rootfs-mount, or /var/cache/rootfs-mount for root].
    /// Or a cache published to an object store: s3://BUCKET/PREFIX (credentials from the
    /// AWS environment and files), or https://HOST/PATH/ (a mirror from `cache publish DIR`).
    #[arg(long, value_name = "DIR|URL", help_heading = "Sources")]
    pub cache: Option<PathBuf>,

    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Serve contexts from this folder instead of the ones embedded in the binary.
    #[arg(long, value_name = "DIR", help_heading = "Sources")]
    pub contexts: Option<PathBuf>,

    /// Docker registry v2 storage shown as rootfs/registry [default: CACHE/registry].
    #[arg(long, value_name = "DIR", help_heading = "Sources")]
    pub registry_data: Option<PathBuf>,

    /// Where gzip seek indexes of the archives are kept [default: CACHE/index].
    #[arg(long, value_name = "DIR", help_heading = "Sources")]
    pub index_dir: Option<PathBuf>,

    /// Mount even when cache entries the tree needs are missing.
    #[arg(long, help_heading = "Sources")]
    pub allow_missing: bool,
}

/// Options of a cache held in an object store (`--cache s3://...` or `https://...`).
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Endpoint of an S3-compatible store (Garage, MinIO, Ceph RGW, OSS) [default: AWS, or AWS_ENDPOINT_URL].
    #[arg(long, value_name = "URL", help_heading = "Remote cache")]
    pub s3_endpoint: Option<String>,

    /// Where blocks read from the store are kept, verified, across mounts [default: $XDG_CACHE_HOME/rootfs-mount/remote, or /var/cache/rootfs-mount/remote for root].
    #[arg(long, value_name = "DIR", help_heading = "Remote cache")]
    pub local_cache: Option<PathBuf>,

    /// Most bytes the local block cache keeps (least recently used evicted first): 10G, 500M, 0 (keep none).
    #[arg(long, value_name = "SIZE", default_value = "10G", value_parser = parse_size, help_heading = "Remote cache")]
    pub local_cache_size: u64,

    /// Longest a read waits for a store that does not answer (retries included) before it fails with EIO.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, help_heading = "Remote cache")]
    pub remote_timeout: std::time::Duration,
}

impl RemoteArgs {
    /// The remote cache `--cache` names, if it is a URL.
    pub fn options(&self, cache: Option<&Path>) -> Result<Option<RemoteOptions>, String> {
        let Some(location) = cache.and_then(|c| Location::parse(&c.to_string_lossy())) else {
            return Ok(None);
        };
        let local_cache = match &self.local_cache {
            Some(dir) => absolute(dir)?,
            None => default_cache().join("remote"),
        };
        Ok(Some(RemoteOptions {
            location: location?,
            endpoint: self.s3_endpoint.clone(),
            local_cache,
            local_cache_size: self.local_cache_size,
            timeout: self.remote_timeout,
        }))
    }
}

/// `10G`, `500M`, `64K`, plain bytes (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let shift = match unit
        .trim_end_matches(['B', 'b', 'i'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("bad size {text:?}: expected e.g. 10G, 500M, 0")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("bad size {text:?}: expected e.g. 10G, 500M, 0"))
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Empty folder to mount the build directory on. mount(8) form: SOURCE MOUNTPOINT,
    /// where SOURCE is `rootfs-mount` or `rootfs-mount:VERSION`.
    #[arg(required = true, value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,

    /// The MOUNTPOINT of the mount(8) form `SOURCE MOUNTPOINT -o OPTIONS`.
    #[arg(hide = true)]
    pub helper_mountpoint: Option<PathBuf>,

    #[command(flatten)]
    pub build: BuildArgs,

    /// Keep changes made through the mount in DIR (created if missing); they show again on
    /// the next mount with the same DIR [default: a scratch folder removed at unmount].
    #[arg(
        long,
        value_name = "DIR",
        help_heading = "Writes",
        conflicts_with = "read_only"
    )]
    pub upper: Option<PathBuf>,

    /// Refuse every write with EROFS.
    #[arg(long, help_heading = "Writes")]
    pub read_only: bool,

    /// Refuse an --upper folder last used with other parameters (version, CRI, CNI,
    /// sealer generation or values) instead of warning.
    #[arg(long, help_heading = "Writes", requires = "upper")]
    pub strict: bool,

    /// Serve every read from the daemon, even where the kernel could read plain backing
    /// files directly (FUSE passthrough, Linux >= 6.9, root).
    #[arg(long, help_heading = "Daemon")]
    pub no_passthrough: bool,

    /// Layer files smaller than SIZE are read through the daemon, whose page cache keeps
    /// them across opens (cheaper per file); larger ones by the kernel itself
    /// (passthrough: faster per byte). 0 hands every file to the kernel.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size, help_heading = "Daemon")]
    pub passthrough_min: u64,

    /// Stay in the foreground.
    #[arg(short = 'f', long, help_heading = "Daemon")]
    pub foreground: bool,

    /// Recover a stale mount on MOUNTPOINT (its daemon was killed) before mounting.
    #[arg(long, help_heading = "Daemon")]
    pub force: bool,

    /// Let other users read the mount (needs user_allow_other for non-root); also turns
    /// on auto_unmount when fusermount3 is installed.
    #[arg(long, help_heading = "Daemon")]
    pub allow_other: bool,

    /// Log level; RUST_LOG overrides.
    #[arg(long, value_enum, default_value_t = LogLevel::Info, help_heading = "Daemon")]
    pub log_level: LogLevel,

    /// Where a backgrounded daemon logs [default: journald when it runs, else syslog
    /// (/dev/log), else STATE/rootfs-mount.log].
    #[arg(long, value_name = "FILE", help_heading = "Daemon")]
    pub log_file: Option<PathBuf>,
}

/// The default cache folder (docs/DESIGN.md §4).
fn default_cache() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("rootfs-mount");
    }
    // SAFETY-free check of the effective uid through std: root owns /proc/self.
    if is_root() {
        return PathBuf::from("/var/cache/rootfs-mount");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".cache/rootfs-mount")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl MountArgs {
    /// The mountpoint, and the source of the mount(8) form (`SOURCE MOUNTPOINT`).
    pub fn mountpoint_and_source(&self) -> (PathBuf, Option<&Path>) {
        match (&self.mountpoint, &self.helper_mountpoint) {
            (Some(source), Some(point)) => (point.clone(), Some(source.as_path())),
            (point, _) => (point.clone().unwrap_or_default(), None),
        }
    }

    /// The Kubernetes version: `--k8s`, or the version in the source
    /// (`rootfs-mount:v1.23.4`); both must agree when both are given.
    fn version_text(&self) -> Result<String, String> {
        let from_source = match self.mountpoint_and_source().1 {
            None => None,
            Some(source) => {
                let text = source.to_string_lossy();
                match text.split_once(':') {
                    Some((FS_NAME, version)) => Some(version.to_string()),
                    None if text == FS_NAME => None,
                    _ => {
                        return Err(match subcommand_like(&text) {
                            Some(command) => format!(
                                "unknown command {text:?}: did you mean `rootfs-mount {command}`?"
                            ),
                            None => format!(
                                "unknown source {text:?}: expected {FS_NAME} or {FS_NAME}:VERSION (rootfs-mount SOURCE MOUNTPOINT -o OPTIONS)"
                            ),
                        })
                    }
                }
            }
        };
        match (&self.build.k8s, from_source) {
            (Some(k8s), Some(source)) if *k8s != source => Err(format!(
                "the source says {source} and k8s says {k8s}: give the version once"
            )),
            (Some(k8s), _) => Ok(k8s.clone()),
            (None, Some(source)) => Ok(source),
            (None, None) => Err(
                "no Kubernetes version: pass --k8s VERSION (mount -o k8s=VERSION, or the source rootfs-mount:VERSION)"
                    .into(),
            ),
        }
    }

    /// Validates the arguments into mount parameters (the mountpoint is checked by the
    /// daemon, which knows about mounts).
    pub fn params(&self) -> Result<MountParams, String> {
        let upper = if self.read_only {
            Upper::None
        } else {
            match &self.upper {
                Some(dir) => Upper::Kept(absolute(dir)?),
                None => Upper::Scratch,
            }
        };
        self.build.params_for(&self.version_text()?, upper)
    }
}

impl BuildArgs {
    /// Validates the build options into parameters, with `upper` as the upper layer.
    pub fn params(&self, upper: Upper) -> Result<MountParams, String> {
        let version = self
            .k8s
            .as_deref()
            .ok_or("no Kubernetes version: pass --k8s VERSION")?;
        self.params_for(version, upper)
    }

    /// Like [`BuildArgs::params`], for the Kubernetes version `version`.
    pub fn params_for(&self, version: &str, upper: Upper) -> Result<MountParams, String> {
        let version = KubeVersion::parse(version)?;
        let arches = parse_arches(&self.arch)?;
        // The domain is written into YAML and TOML configs: host names, IPv4, [IPv6]
        // and a port only, so it can never break out of the value it is written into.
        let domain = self.registry_domain.trim();
        let host_chars = |c: char| c.is_ascii_alphanumeric() || ".-:[]_".contains(c);
        if domain.is_empty() || domain.len() > 253 || !domain.chars().all(host_chars) {
            return Err(format!(
                "invalid --registry-domain {}: expected host[:port]",
                rootfs_mount::render::quote(&self.registry_domain)
            ));
        }
        let remote = self.remote.options(self.cache.as_deref())?;
        let cache = match &remote {
            Some(r) => PathBuf::from(r.location.to_string()),
            None => cache_dir(self.cache.as_deref())?,
        };
        Ok(MountParams {
            remote,
            version,
            cri: self.cri.clone(),
            cni: self.cni.clone(),
            arches,
            cache,
            contexts: self.contexts.as_deref().map(absolute).transpose()?,
            registry_domain: domain.to_string(),
            sealer: self.sealer.clone(),
            values: self.values.overrides()?,
            registry_data: self.registry_data.as_deref().map(absolute).transpose()?,
            index_dir: self.index_dir.as_deref().map(absolute).transpose()?,
            allow_missing: self.allow_missing,
            upper,
        })
    }
}

/// `--log-level`: only the levels there are, so a typo is refused rather than turning
/// logging off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The `tracing` filter directive of the level.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The names the subcommands answer to.
fn subcommands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .chain(["help".to_string()])
        .collect()
}

/// The subcommand `word` is most likely a typo of (`unmount` -> `umount`).
pub fn subcommand_like(word: &str) -> Option<String> {
    let lower = word.to_ascii_lowercase();
    let aliases = [
        ("unmount", "umount"),
        ("stop", "umount"),
        ("stat", "status"),
    ];
    if let Some((_, command)) = aliases.iter().find(|(alias, _)| *alias == lower) {
        return Some(command.to_string());
    }
    let names = subcommands();
    if names.contains(&lower) {
        return None;
    }
    names
        .into_iter()
        .filter(|c| c.len() > 3)
        .find(|c| edit_distance(&lower, c) <= 2)
}

/// Levenshtein distance, for a handful of short words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// What a mount option of `-o` means to us.
enum MountOpt {
    /// A generic mount(8)/FUSE option with nothing to do here (`nofail`, `_netdev`,
    /// `x-systemd.*`, `defaults`, `dev`, `suid`, ...): mount(8), systemd or
    /// mount.fuse3 act on it, or our mount is always `nosuid,nodev`.
    Ignored,
    /// Becomes these arguments.
    Args(Vec<OsString>),
}

/// Options mount(8), mount.fuse3 and systemd pass on or leave in the list, which this
/// program has no use for.
fn ignored_option(key: &str) -> bool {
    const IGNORED: &[&str] = &[
        "rw",
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "nofail",
        "_netdev",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "async",
        "sync",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "diratime",
        "nodiratime",
        "loud",
        "silent",
        "default_permissions",
    ];
    IGNORED.contains(&key)
        || key.starts_with("x-")
        || key.starts_with("comment=")
        || key.starts_with("fsname=")
        || key.starts_with("subtype=")
}

/// Turns the `-o key=val,flag,...` of the mount(8) helper form into long options, by
/// the names the options have on the command line (`_` may stand for `-`):
/// `k8s=v1.23.4,cri=containerd,read_only` is `--k8s=v1.23.4 --cri=containerd
/// --read-only`. `ro` is `--read-only`, `allow_other` is `--allow-other`, and a list
/// option may continue past commas (`arch=amd64,arm64`) or use `:` (`arch=amd64:arm64`).
pub fn expand_mount_options(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let command = Cli::command();
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    out.extend(iter.next());
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        let options = if text == "-o" {
            iter.next()
                .ok_or("-o needs a list of options (-o k8s=v1.23.4,...)")?
        } else if let Some(rest) = text.strip_prefix("-o").filter(|r| !r.is_empty()) {
            rest.into()
        } else {
            out.push(arg);
            continue;
        };
        let options = options
            .into_string()
            .map_err(|o| format!("mount options {o:?} are not UTF-8"))?;
        // The last list option given, which a bare word may continue (`arch=amd64,arm64`).
        let mut list: Option<(String, String)> = None;
        let flush = |list: &mut Option<(String, String)>, out: &mut Vec<OsString>| {
            if let Some((long, values)) = list.take() {
                out.push(format!("--{long}={values}").into());
            }
        };
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match mount_option(&command, option)? {
                Some(MountOpt::Ignored) => {}
                Some(MountOpt::Args(args)) => {
                    flush(&mut list, &mut out);
                    let first = args.first().map(|a| a.to_string_lossy().into_owned());
                    let list_long = first.as_deref().and_then(|a| {
                        let (long, value) = a.strip_prefix("--")?.split_once('=')?;
                        is_list(&command, long).then(|| (long.to_string(), value.replace(':', ",")))
                    });
                    match list_long {
                        Some(l) => list = Some(l),
                        None => out.extend(args),
                    }
                }
                None => match &mut list {
                    Some((_, values)) if !option.contains('=') => {
                        values.push(',');
                        values.push_str(option);
                    }
                    _ => {
                        return Err(format!(
                            "unknown mount option {option:?}: -o takes the long options of `rootfs-mount --help`, e.g. -o k8s=v1.23.4,cache=/var/cache/rootfs-mount,read_only"
                        ))
                    }
                },
            }
        }
        flush(&mut list, &mut out);
    }
    Ok(out)
}

/// Whether the option `long` takes a comma-separated list.
fn is_list(command: &clap::Command, long: &str) -> bool {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .is_some_and(|a| a.get_value_delimiter() == Some(','))
}

/// One option of `-o`; `None` when it names nothing we know.
fn mount_option(command: &clap::Command, option: &str) -> Result<Option<MountOpt>, String> {
    let (key, value) = match option.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (option, None),
    };
    if ignored_option(option) || (value.is_some() && ignored_option(key)) {
        return Ok(Some(MountOpt::Ignored));
    }
    let long = match key {
        "ro" => "read-only".to_string(),
        other => other.replace('_', "-"),
    };
    let Some(arg) = command.get_arguments().find(|a| {
        a.get_long() == Some(long.as_str()) && !matches!(long.as_str(), "help" | "version")
    }) else {
        return Ok(None);
    };
    let takes_value = arg.get_action().takes_values();
    match (takes_value, value) {
        (true, Some(value)) => Ok(Some(MountOpt::Args(vec![
            format!("--{long}={value}").into()
        ]))),
        (true, None) => Err(format!("mount option {key} needs a value: {key}=...")),
        (false, None) => Ok(Some(MountOpt::Args(vec![format!("--{long}").into()]))),
        (false, Some(_)) => Err(format!("mount option {key} takes no value")),
    }
}

/// The command with the facts of the embedded contexts in its help: the values of
/// `--cri`, `--cni` and `--arch`, and the supported Kubernetes versions.
pub fn command() -> clap::Command {
    let facts = rootfs_mount::layers::embedded_file("versions.yaml")
        .and_then(|yaml| rootfs_mount::versions::VersionFacts::parse(yaml).ok());
    let mut command = Cli::command();
    if let Some(facts) = facts {
        let (oldest, newest) = facts.supported_span();
        let cris = facts.cri_names().join(", ");
        let mut cnis = facts.cni_names();
        cnis.push("none");
        let cnis = cnis.join(", ");
        command = command
            .mut_arg("k8s", |a| {
                a.help(format!(
                    "Kubernetes version, e.g. v1.23.4 (or the source rootfs-mount:VERSION) [supported: {oldest} to {newest}]"
                ))
            })
            .mut_arg("cri", |a| {
                a.help(format!(
                    "Container runtime [default: docker below v1.24.0, containerd from v1.24.0] [possible values: {cris}]"
                ))
            })
            .mut_arg("cni", |a| a.help(format!("CNI context [possible values: {cnis}]")))
            .after_help(format!(
                "Kubernetes versions supported: {oldest} to {newest}.\nmount(8) form: rootfs-mount rootfs-mount:VERSION MOUNTPOINT -o k8s=VERSION,cache=DIR,... (any long option)."
            ));
    }
    command.mut_arg("arch", |a| {
        a.help(format!(
            "Architectures to present, comma-separated [possible values: {}]",
            KNOWN_ARCHES.join(", ")
        ))
    })
}

/// Parses the process arguments: the mount(8) helper form first, then clap; a first
/// word that looks like a mistyped subcommand gets "did you mean".
pub fn parse() -> Result<Cli, String> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let first = args.get(1).map(|a| a.to_string_lossy().into_owned());
    let is_command = first.as_ref().is_some_and(|f| subcommands().contains(f));
    if let Some(first) = first.filter(|f| !is_command && !f.starts_with('-')) {
        if !Path::new(&first).exists() {
            if let Some(command) = subcommand_like(&first) {
                return Err(format!(
                    "unknown command {first:?}: did you mean `rootfs-mount {command}`?"
                ));
            }
        }
    }
    if !is_command {
        args = expand_mount_options(args)?;
    }
    let matches = command()
        .try_get_matches_from(args)
        .unwrap_or_else(|e| e.exit());
    Cli::from_arg_matches(&matches).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn expand(args: &[&str]) -> Result<Vec<String>, String> {
        expand_mount_options(args.iter().map(OsString::from).collect()).map(|v| {
            v.into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn mount_options_become_long_options() {
        assert_eq!(
            expand(&[
                "rootfs-mount",
                "rootfs-mount:v1.23.4",
                "/mnt/build",
                "-o",
                "rw,k8s=v1.23.4,nofail,_netdev,x-systemd.automount,arch=amd64,arm64,registry_domain=sea.hub:5000,dev,suid,allow_other,ro",
            ])
            .unwrap(),
            [
                "rootfs-mount",
                "rootfs-mount:v1.23.4",
                "/mnt/build",
                "--k8s=v1.23.4",
                "--arch=amd64,arm64",
                "--registry-domain=sea.hub:5000",
                "--allow-other",
                "--read-only",
            ]
        );
        assert_eq!(
            expand(&["x", "-oarch=arm64:amd64,cache=/c"]).unwrap(),
            ["x", "--arch=arm64,amd64", "--cache=/c"]
        );
        assert!(expand(&["x", "-o", "bogus=1"])
            .unwrap_err()
            .contains("unknown mount option \"bogus=1\""));
        assert!(expand(&["x", "-o", "k8s"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(expand(&["x", "-o", "read_only=yes"])
            .unwrap_err()
            .contains("takes no value"));
        assert!(expand(&["x", "-o"]).is_err());
    }

    #[test]
    fn typos_of_subcommands_are_named() {
        assert_eq!(subcommand_like("unmount").as_deref(), Some("umount"));
        assert_eq!(subcommand_like("umonut").as_deref(), Some("umount"));
        assert_eq!(subcommand_like("stauts").as_deref(), Some("status"));
        assert_eq!(subcommand_like("fecth").as_deref(), Some("fetch"));
        assert_eq!(subcommand_like("/mnt/build"), None);
        assert_eq!(subcommand_like("umount"), None);
    }

    #[test]
    fn help_lists_values_and_the_version_span() {
        let help = command().render_help().to_string();
        assert!(
            help.contains("possible values: containerd, docker"),
            "{help}"
        );
        assert!(help.contains("possible values: calico, none"), "{help}");
        assert!(help.contains("possible values: amd64, arm64"), "{help}");
        assert!(help.contains("v1.13.0 to v1.31.x"), "{help}");
        command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "s", "2h", "-1s", "0s", "1e9s", "2 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_mirrors() {
        assert_eq!(
            parse_image_mirror("docker.io=http://127.0.0.1:5000").unwrap(),
            ("docker.io".to_string(), "http://127.0.0.1:5000".to_string())
        );
        for bad in ["docker.io", "=http://x", "docker.io=ftp://x", "docker.io="] {
            assert!(parse_image_mirror(bad).is_err(), "{bad:?}");
        }
    }
}
