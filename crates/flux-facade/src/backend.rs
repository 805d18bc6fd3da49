//! Backend selection from one string (`FLUX_BACKEND`, `--backend`): `local`,
//! `local:/path/to/model`, `http(s)://host:port`, or `failover:URL,URL,...`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use flux_types::Generator;

use crate::error::FacadeError;

/// The environment variable holding the backend spec.
pub const BACKEND_ENV: &str = "FLUX_BACKEND";
/// The environment variable holding the API key sent to remote backends.
pub const API_KEY_ENV: &str = "FLUX_API_KEY";

const SPEC_FORMS: &str =
    "expected `local`, `local:/path/to/model`, `http(s)://host:port` or `failover:URL,URL,...`";

/// Which generator to build. Parse one with [`str::parse`] or read it with [`Backend::from_env`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// flux-core on this machine. `model_dir: None` is the tiny model bundled in the binary.
    Local { model_dir: Option<PathBuf> },
    /// One flux server.
    Remote {
        url: String,
        api_key: Option<String>,
    },
    /// Several flux servers, tried in order: the next one is asked when one is unreachable,
    /// overloaded or not ready.
    Failover {
        urls: Vec<String>,
        api_key: Option<String>,
    },
}

impl Default for Backend {
    /// The bundled tiny model, on this machine.
    fn default() -> Self {
        Self::Local { model_dir: None }
    }
}

impl Backend {
    /// `FLUX_BACKEND` (default: [`Backend::default`]), with `FLUX_API_KEY` for remote backends.
    pub fn from_env() -> Result<Self, FacadeError> {
        let spec = match std::env::var(BACKEND_ENV) {
            Ok(spec) => spec,
            Err(std::env::VarError::NotPresent) => String::new(),
            // Not a silent fall back to the local model: the user asked for something.
            Err(std::env::VarError::NotUnicode(raw)) => {
                return Err(FacadeError::InvalidBackend {
                    spec: raw.to_string_lossy().into_owned(),
                    reason: format!("{BACKEND_ENV} is not valid UTF-8"),
                });
            }
        };
        let backend = if spec.trim().is_empty() {
            Self::default()
        } else {
            spec.parse()?
        };
        Ok(backend.with_api_key(api_key_from_env()))
    }

    /// Sets the API key of a remote backend; no effect on a local one.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        match &mut self {
            Self::Remote { api_key, .. } | Self::Failover { api_key, .. } => *api_key = key,
            Self::Local { .. } => {}
        }
        self
    }

    /// Whether this backend runs the model in this process.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local { .. })
    }

    /// Builds the generator with default options. A local backend loads its model here (seconds
    /// for a large model; call it from `spawn_blocking` inside a busy async runtime).
    pub fn start(&self) -> Result<Arc<dyn Generator>, FacadeError> {
        #[cfg(feature = "local")]
        return self.start_with(&crate::local::LocalOptions::default());
        #[cfg(not(feature = "local"))]
        return self.start_remote();
    }

    /// Builds the generator; `local` configures a local backend's engine.
    #[cfg(feature = "local")]
    pub fn start_with(
        &self,
        local: &crate::local::LocalOptions,
    ) -> Result<Arc<dyn Generator>, FacadeError> {
        match self {
            Self::Local {
                model_dir: Some(dir),
            } => Ok(Arc::new(crate::local::LocalGenerator::start(dir, local)?)),
            Self::Local { model_dir: None } => {
                let dir = crate::bundled::bundled_model_dir()?;
                let generator = crate::local::LocalGenerator::start(&dir, local)?
                    .with_id(crate::bundled::BUNDLED_MODEL_ID);
                Ok(Arc::new(generator))
            }
            _ => self.start_remote(),
        }
    }

    fn start_remote(&self) -> Result<Arc<dyn Generator>, FacadeError> {
        match self {
            Self::Local { .. } => Err(FacadeError::FeatureDisabled {
                backend: self.to_string(),
                feature: "local",
            }),
            #[cfg(feature = "remote")]
            Self::Remote { url, api_key } => Ok(Arc::new(crate::remote::RemoteGenerator::new(
                url,
                api_key.clone(),
            )?)),
            #[cfg(feature = "remote")]
            Self::Failover { urls, api_key } => {
                let remotes = urls
                    .iter()
                    .map(|url| crate::remote::RemoteGenerator::for_failover(url, api_key.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Arc::new(crate::remote::FailoverGenerator::new(remotes)))
            }
            #[cfg(not(feature = "remote"))]
            Self::Remote { .. } | Self::Failover { .. } => Err(FacadeError::FeatureDisabled {
                backend: self.to_string(),
                feature: "remote",
            }),
        }
    }
}

/// `FLUX_API_KEY`, when set and not blank.
pub fn api_key_from_env() -> Option<String> {
    std::env::var(API_KEY_ENV)
        .ok()
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
}

impl FromStr for Backend {
    type Err = FacadeError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| FacadeError::InvalidBackend {
            spec: spec.to_owned(),
            reason,
        };
        let trimmed = spec.trim();
        if trimmed.is_empty() {
            return Err(invalid(format!("the backend is empty; {SPEC_FORMS}")));
        }
        if trimmed == "local" {
            return Ok(Self::Local { model_dir: None });
        }
        if let Some(path) = trimmed.strip_prefix("local:") {
            if path.trim().is_empty() {
                return Err(invalid(
                    "`local:` needs a model folder after the colon (or use plain `local` for the bundled model)"
                        .to_owned(),
                ));
            }
            return Ok(Self::Local {
                model_dir: Some(PathBuf::from(path)),
            });
        }
        if let Some(list) = trimmed.strip_prefix("failover:") {
            let urls = list
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(|url| check_url(url).map_err(&invalid))
                .collect::<Result<Vec<_>, _>>()?;
            if urls.is_empty() {
                return Err(invalid(
                    "`failover:` needs at least one http(s) URL".to_owned(),
                ));
            }
            return Ok(Self::Failover {
                urls,
                api_key: None,
            });
        }
        if trimmed.contains("://") {
            let url = check_url(trimmed).map_err(invalid)?;
            return Ok(Self::Remote { url, api_key: None });
        }
        Err(invalid(SPEC_FORMS.to_owned()))
    }
}

/// Checks the shape of a server URL (scheme and host) and drops trailing slashes.
fn check_url(url: &str) -> Result<String, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{url:?} is not a URL; {SPEC_FORMS}"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "unsupported scheme {scheme:?} in {url:?}: use http or https"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{url:?} has no host"));
    }
    if let Some((_, port)) = authority.rsplit_once(':')
        && !authority.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{url:?} has an invalid port {port:?}"));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!("{url:?} contains whitespace"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

impl fmt::Display for Backend {
    /// The spec this backend parses from; the API key is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local { model_dir: None } => f.write_str("local"),
            Self::Local {
                model_dir: Some(dir),
            } => write!(f, "local:{}", dir.display()),
            Self::Remote { url, .. } => f.write_str(url),
            Self::Failover { urls, .. } => write!(f, "failover:{}", urls.join(",")),
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = |key: &Option<String>| {
            if key.is_some() {
                "<redacted>"
            } else {
                "<none>"
            }
        };
        match self {
            Self::Local { model_dir } => f
                .debug_struct("Local")
                .field("model_dir", model_dir)
                .finish(),
            Self::Remote { url, api_key } => f
                .debug_struct("Remote")
                .field("url", url)
                .field("api_key", &key(api_key))
                .finish(),
            Self::Failover { urls, api_key } => f
                .debug_struct("Failover")
                .field("urls", urls)
                .field("api_key", &key(api_key))
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(spec: &str) -> String {
        match spec.parse::<Backend>() {
            Err(FacadeError::InvalidBackend { reason, .. }) => reason,
            other => panic!("{spec:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn every_spec_form_parses() -> anyhow::Result<()> {
        assert_eq!(
            "local".parse::<Backend>()?,
            Backend::Local { model_dir: None }
        );
        assert_eq!(" local ".parse::<Backend>()?, Backend::default());
        assert_eq!(
            "local:/models/flux-dev".parse::<Backend>()?,
            Backend::Local {
                model_dir: Some("/models/flux-dev".into())
            }
        );
        assert_eq!(
            "https://flux.example:8443/".parse::<Backend>()?,
            Backend::Remote {
                url: "https://flux.example:8443".into(),
                api_key: None
            }
        );
        assert_eq!(
            "http://127.0.0.1:8080".parse::<Backend>()?,
            Backend::Remote {
                url: "http://127.0.0.1:8080".into(),
                api_key: None
            }
        );
        assert_eq!(
            "failover:http://a:1, https://b:2,".parse::<Backend>()?,
            Backend::Failover {
                urls: vec!["http://a:1".into(), "https://b:2".into()],
                api_key: None
            }
        );
        Ok(())
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(reason("").contains("empty"));
        assert!(reason("gpu").contains("expected `local`"));
        assert!(reason("local:").contains("needs a model folder"));
        assert!(reason("ftp://host").contains("unsupported scheme \"ftp\""));
        assert!(reason("http://").contains("has no host"));
        assert!(reason("http://host:99999").contains("invalid port"));
        assert!(reason("failover:").contains("at least one"));
        assert!(reason("failover:http://a:1,localhost").contains("not a URL"));
    }

    #[test]
    fn display_round_trips_and_hides_the_key() -> anyhow::Result<()> {
        for spec in [
            "local",
            "local:/m",
            "http://h:1",
            "failover:http://a:1,http://b:2",
        ] {
            assert_eq!(spec.parse::<Backend>()?.to_string(), spec);
        }
        let backend = "http://h:1"
            .parse::<Backend>()?
            .with_api_key(Some("sk-secret".into()));
        assert!(!format!("{backend:?} {backend}").contains("sk-secret"));
        assert_eq!(
            Backend::default().with_api_key(Some("k".into())),
            Backend::Local { model_dir: None }
        );
        Ok(())
    }
}
