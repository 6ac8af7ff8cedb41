//! Image references as users write them (`calico/cni:v3.22.1`,
//! `docker.io/library/registry:2.8.3@sha256:...`), and the two names derived from them:
//! the repository in our registry storage (the source host dropped, as sealer's registry
//! stores images) and the familiar `RepoTags` name `docker save` writes.

use super::digest::Digest;
use oci_client::Reference;

/// A parsed image reference (docker's normalisation: a bare name is `docker.io/library/NAME`).
#[derive(Clone, Debug)]
pub struct ImageName {
    pub reference: Reference,
    /// The digest pin, when the reference has one; what is pulled then, whatever the tag.
    pub digest: Option<Digest>,
}

impl ImageName {
    pub fn parse(text: &str) -> Result<ImageName, String> {
        let reference: Reference = text
            .parse()
            .map_err(|e| format!("image reference {text:?}: {e}"))?;
        let digest = reference.digest().map(Digest::parse).transpose()?;
        if reference.tag().is_some_and(|tag| tag.contains('/')) {
            return Err(format!("image reference {text:?}: bad tag"));
        }
        Ok(ImageName { reference, digest })
    }

    /// The host the image comes from (`docker.io`, `registry.k8s.io`, ...), the key of
    /// [`super::PullOptions::mirrors`].
    pub fn host(&self) -> &str {
        self.reference.registry()
    }

    /// The repository inside the registry storage: the path without the host, with
    /// docker.io's `library/` for single names (`docker.io/calico/cni` -> `calico/cni`,
    /// `nginx` -> `library/nginx`, `registry.k8s.io/kube-apiserver` -> `kube-apiserver`).
    /// This is the name sealer's registry stores an image under.
    pub fn storage_repository(&self) -> &str {
        self.reference.repository()
    }

    /// The tag, if the reference names one (`latest` is not assumed when a digest pins it).
    pub fn tag(&self) -> Option<&str> {
        match (self.reference.tag(), &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, Some(_)) => None,
            (None, None) => Some("latest"),
        }
    }

    /// The name `docker save` writes in `RepoTags`: docker.io's short form
    /// (`registry:2.8.3`, `calico/cni:v3.22.1`), other hosts in full.
    pub fn repo_tag(&self) -> Option<String> {
        let tag = self.tag()?;
        Some(format!("{}:{tag}", self.familiar_repository()))
    }

    /// The repository as `docker images` shows it (the `repositories` file's key).
    pub fn familiar_repository(&self) -> String {
        let repository = self.reference.repository();
        if self.host() == "docker.io" {
            repository
                .strip_prefix("library/")
                .unwrap_or(repository)
                .to_string()
        } else {
            format!("{}/{repository}", self.host())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn storage_repository_drops_the_host_as_sealer_does() {
        let cases = [
            (
                "docker.io/calico/cni:v3.22.1",
                "calico/cni",
                "calico/cni:v3.22.1",
            ),
            ("calico/cni:v3.22.1", "calico/cni", "calico/cni:v3.22.1"),
            ("nginx", "library/nginx", "nginx:latest"),
            (
                "docker.io/library/registry:2.8.3",
                "library/registry",
                "registry:2.8.3",
            ),
            (
                "registry.k8s.io/kube-apiserver:v1.23.4",
                "kube-apiserver",
                "registry.k8s.io/kube-apiserver:v1.23.4",
            ),
            ("127.0.0.1:5000/a/b:c", "a/b", "127.0.0.1:5000/a/b:c"),
        ];
        for (text, repository, repo_tag) in cases {
            let name = ImageName::parse(text).unwrap();
            assert_eq!(name.storage_repository(), repository, "{text}");
            assert_eq!(name.repo_tag().as_deref(), Some(repo_tag), "{text}");
        }
    }

    #[test]
    fn digest_pins_and_tags() {
        let name = ImageName::parse(&format!("registry:2.8.3@{DIGEST}")).unwrap();
        assert_eq!(name.digest.as_ref().unwrap().to_string(), DIGEST);
        assert_eq!(name.tag(), Some("2.8.3"));
        let name = ImageName::parse(&format!("registry@{DIGEST}")).unwrap();
        assert_eq!(name.tag(), None);
        assert!(ImageName::parse("registry@sha256:abc").is_err());
        assert!(ImageName::parse("docker.io/Upper/case").is_err());
    }
}
