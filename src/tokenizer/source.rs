//! A `--tokenizer` value (and a pipeline file's `tokenizer`): a built-in vocabulary by name (`gpt2`, `cl100k_base`,
//! `o200k_base`), `hf:REPO` (a model repo's tokenizer.json and tokenizer_config.json, fetched through `crate::hub`:
//! HF_ENDPOINT, HF_HOME, HF_TOKEN, and the cache alone with HF_HUB_OFFLINE=1 or when the hub is unreachable), or a
//! path (a tokenizer.json, or a folder holding one). A folder named like a built-in vocabulary is given as `./gpt2`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::hub::{HubClient, HubError};
use crate::tokenizer::hf::{HfTokenizer, TOKENIZER_CONFIG_JSON, TOKENIZER_JSON};
use crate::tokenizer::{Tokenizer, TokenizerError, TokenizerKind};

const HUB_PREFIX: &str = "hf:";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TokenizerSource {
    Builtin(TokenizerKind),
    /// `hf:REPO`: a model repo on the hub (revision main).
    Hub(String),
    /// A tokenizer.json, or a folder holding one.
    Path(PathBuf),
}

impl FromStr for TokenizerSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(kind) = s.parse::<TokenizerKind>() {
            return Ok(TokenizerSource::Builtin(kind));
        }
        if let Some(repo) = s.strip_prefix(HUB_PREFIX) {
            let ok = !repo.is_empty()
                && repo.split('/').count() <= 2
                && repo.split('/').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                });
            if !ok {
                return Err(format!("`{s}`: expected hf:OWNER/NAME, a model repo on the Hugging Face hub"));
            }
            return Ok(TokenizerSource::Hub(repo.to_string()));
        }
        if s.is_empty() {
            return Err("an empty tokenizer: give gpt2, cl100k_base, o200k_base, hf:OWNER/NAME or a path".into());
        }
        Ok(TokenizerSource::Path(PathBuf::from(s)))
    }
}

impl TryFrom<String> for TokenizerSource {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TokenizerSource> for String {
    fn from(s: TokenizerSource) -> String {
        s.to_string()
    }
}

impl From<TokenizerKind> for TokenizerSource {
    fn from(k: TokenizerKind) -> Self {
        TokenizerSource::Builtin(k)
    }
}

impl fmt::Display for TokenizerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerSource::Builtin(k) => write!(f, "{k}"),
            TokenizerSource::Hub(repo) => write!(f, "{HUB_PREFIX}{repo}"),
            TokenizerSource::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl TokenizerSource {
    /// Load it; `hf:` repos through a hub client from the environment.
    pub fn load(&self) -> Result<Tokenizer, TokenizerError> {
        self.load_with(HubClient::from_env)
    }

    /// Load it, `hf:` repos through the client `hub` makes (called only for them).
    pub fn load_with(&self, hub: impl FnOnce() -> Result<HubClient, HubError>) -> Result<Tokenizer, TokenizerError> {
        match self {
            TokenizerSource::Builtin(k) => Ok(Tokenizer::new(*k)),
            TokenizerSource::Path(p) if !p.exists() => Err(TokenizerError::Unsupported(format!(
                "--tokenizer {}: no such file or folder (a tokenizer is gpt2, cl100k_base, o200k_base, \
                 hf:OWNER/NAME, or the path of a tokenizer.json or of a folder holding one)",
                p.display()
            ))),
            TokenizerSource::Path(p) => Ok(HfTokenizer::load_path(p, &p.display().to_string())?.into()),
            TokenizerSource::Hub(repo) => {
                let client = hub()?;
                let json_path = client.download_model_file(repo, TOKENIZER_JSON)?;
                let config = match client.download_model_file(repo, TOKENIZER_CONFIG_JSON) {
                    Ok(path) => Some(read(&path)?),
                    Err(HubError::MissingFile { .. }) => None,
                    Err(HubError::NotCached { reason, .. }) => {
                        // Offline with tokenizer.json cached but not its config: the repo may have none.
                        tracing::warn!("hf:{repo}: no cached {TOKENIZER_CONFIG_JSON} ({reason}); going on without it");
                        None
                    }
                    Err(e) => return Err(e.into()),
                };
                Ok(HfTokenizer::from_bytes(read(&json_path)?, config, &self.to_string(), &json_path)?.into())
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hub_repos_and_paths_parse() {
        let parse = |s: &str| s.parse::<TokenizerSource>();
        assert_eq!(parse("gpt2"), Ok(TokenizerSource::Builtin(TokenizerKind::Gpt2)));
        assert_eq!(parse("r50k_base"), Ok(TokenizerSource::Builtin(TokenizerKind::Gpt2)));
        assert_eq!(
            parse("hf:HuggingFaceTB/SmolLM2-135M"),
            Ok(TokenizerSource::Hub("HuggingFaceTB/SmolLM2-135M".into()))
        );
        assert_eq!(parse("./gpt2"), Ok(TokenizerSource::Path("./gpt2".into())));
        assert_eq!(parse("models/x/tokenizer.json").unwrap().to_string(), "models/x/tokenizer.json");
        for bad in ["hf:", "hf:a/b/c", "hf:a b", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let err = parse("gpt3").unwrap().load().unwrap_err().to_string();
        assert!(err.contains("--tokenizer gpt3: no such file") && err.contains("cl100k_base"), "{err}");
        let back: TokenizerSource = serde_json::from_str("\"hf:a/b\"").unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), "\"hf:a/b\"");
    }
}
