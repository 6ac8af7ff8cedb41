//! sealer generations, read from `contexts/sealer.yaml`: the Kubefile form, the lvscare
//! image and the Clusterfile API that one generation of sealer expects of a base image.
//! Like `versions`, this module only parses the data and picks an entry.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What one generation of sealer expects.
#[derive(Clone, Debug, Deserialize)]
pub struct Generation {
    /// The sealer releases this entry is for, for messages and `status`.
    pub covers: String,
    /// The Kubefile's COPY lines, in order.
    pub copy: Vec<String>,
    /// The image sealer runs for its apiserver load balancer; the image list carries it.
    pub lvscare_image: String,
    pub clusterfile_api_version: String,
}

/// The whole data file.
#[derive(Debug, Deserialize)]
pub struct SealerFacts {
    default: String,
    generations: BTreeMap<String, Generation>,
}

impl SealerFacts {
    pub fn parse(yaml: &[u8]) -> Result<Self, String> {
        let facts: SealerFacts =
            serde_yaml::from_slice(yaml).map_err(|e| format!("sealer.yaml: {e}"))?;
        if !facts.generations.contains_key(&facts.default) {
            return Err(format!(
                "sealer.yaml: default {:?} is not a generation",
                facts.default
            ));
        }
        Ok(facts)
    }

    /// The generation `name` (`None`: the default), with its name.
    pub fn generation(&self, name: Option<&str>) -> Result<(String, Generation), String> {
        let name = name.unwrap_or(&self.default);
        self.generations
            .get(name)
            .map(|g| (name.to_string(), g.clone()))
            .ok_or_else(|| {
                format!(
                    "unknown sealer generation {name:?}: expected one of {}",
                    self.generations
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SealerFacts {
        SealerFacts::parse(crate::layers::embedded_file("sealer.yaml").expect("embedded")).unwrap()
    }

    #[test]
    fn generations_differ_where_sealer_does() {
        let f = facts();
        let (name, current) = f.generation(None).unwrap();
        assert_eq!(name, "v0.9");
        assert!(current.copy.contains(&"COPY rootfs .".to_string()));
        assert!(current.copy.iter().any(|c| c.ends_with("manifests/")));
        let (_, old) = f.generation(Some("v0.8")).unwrap();
        assert!(old.copy.contains(&"COPY rootfs/* .".to_string()));
        assert_ne!(current.lvscare_image, old.lvscare_image);
        assert!(f
            .generation(Some("v1.0"))
            .unwrap_err()
            .contains("v0.8, v0.9"));
    }
}
