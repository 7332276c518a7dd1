//! Which local command runs a container image. Built in: the images of Knative's samples
//! (`helloworld-go`, `autoscale-go`, any registry and tag) run Sluice's sample app. More
//! come from a mapping file (`sluice run --images FILE`):
//!
//! ```yaml
//! images:
//!   ghcr.io/acme/shop: ["/usr/local/bin/shop", "--port-from-env"]
//!   hello-python: ["python3", "app.py"]
//! ```
//!
//! A key matches an image's repository (tag and digest dropped) whole, or its last path
//! segment. The command `sample-app` means Sluice's own sample app. [`Local::resolve`]
//! finds out, before planning, which of the programs the manifests name this machine lacks.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sluice_serving::manifest::Manifests;

use crate::world::{Local, argv};

/// The word for Sluice's built-in sample app in a mapping.
pub use crate::spec::SAMPLE_APP;

#[derive(Clone, Debug)]
pub struct ImageMap {
    entries: BTreeMap<String, Vec<String>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    images: BTreeMap<String, Vec<String>>,
}

impl Default for ImageMap {
    fn default() -> Self {
        let sample = || vec![SAMPLE_APP.to_owned()];
        Self {
            entries: BTreeMap::from([
                ("helloworld-go".to_owned(), sample()),
                ("autoscale-go".to_owned(), sample()),
            ]),
        }
    }
}

impl ImageMap {
    /// The built-in entries plus a file's (the file's win).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: ImageFile =
            serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut map = Self::default();
        for (image, command) in file.images {
            if command.is_empty() {
                return Err(format!(
                    "{}: images.{image}: the command must not be empty",
                    path.display()
                ));
            }
            map.entries.insert(image, command);
        }
        Ok(map)
    }

    /// The command for `image`, if mapped.
    pub fn command(&self, image: &str) -> Option<&[String]> {
        let repo = repository(image);
        let last = repo.rsplit('/').next().unwrap_or(repo);
        self.entries
            .get(repo)
            .or_else(|| self.entries.get(last))
            .map(Vec::as_slice)
    }
}

/// `registry:5000/path/name:tag@sha256:…` → `registry:5000/path/name`.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

impl<'a> Local<'a> {
    /// Looks up, on this machine, every program the manifests' containers name (the
    /// planner itself does no I/O).
    pub fn resolve(m: &Manifests, images: &'a ImageMap) -> Self {
        let missing = m
            .services
            .iter()
            .flat_map(|s| &s.spec.template.spec.containers)
            .filter_map(|c| argv(c, images).ok()?.into_iter().next())
            .filter(|p| p != SAMPLE_APP && find_program(p).is_none())
            .collect();
        Self {
            images,
            missing,
            cluster: false,
        }
    }

    /// For pods on Kubernetes: images are run as they are.
    pub fn cluster(images: &'a ImageMap) -> Self {
        Self {
            images,
            missing: BTreeSet::new(),
            cluster: true,
        }
    }
}

/// Where `program` runs from: itself if it names a path, else the first match on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knative_sample_images_run_the_sample_app_whatever_the_registry_and_tag() {
        let map = ImageMap::default();
        for image in [
            "gcr.io/knative-samples/helloworld-go",
            "ghcr.io/knative/helloworld-go:latest",
            "gcr.io/knative-samples/autoscale-go:0.1",
            "registry.local:5000/knative-samples/autoscale-go@sha256:abcd",
            "autoscale-go",
        ] {
            assert_eq!(
                map.command(image),
                Some(&[SAMPLE_APP.to_owned()][..]),
                "{image}"
            );
        }
        assert_eq!(
            map.command("gcr.io/knative-samples/helloworld-python"),
            None
        );
        assert_eq!(map.command("registry.local:5000/other"), None);
    }

    #[test]
    fn a_mapping_file_adds_images() {
        let dir = std::env::temp_dir().join(format!("sluice-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("images.yaml");
        std::fs::write(
            &path,
            "images:\n  ghcr.io/acme/shop: [/bin/shop, --fast]\n  empty: []\n",
        )
        .expect("write");
        let err = ImageMap::load(&path).expect_err("empty command refused");
        assert!(err.contains("images.empty"), "{err}");
        std::fs::write(&path, "images:\n  ghcr.io/acme/shop: [/bin/shop, --fast]\n")
            .expect("write");
        let map = ImageMap::load(&path).expect("valid");
        assert_eq!(
            map.command("ghcr.io/acme/shop:v2"),
            Some(&["/bin/shop".to_owned(), "--fast".to_owned()][..])
        );
        assert!(map.command("helloworld-go").is_some(), "built-ins stay");
        std::fs::remove_dir_all(&dir).ok();
    }
}
