//! Loading the config: read the file, parse it, read the files it names, check the lot. Each
//! step is its own function; `ConfigError` says which one failed.

use std::path::{Path, PathBuf};

use super::files::ConfigFiles;
use super::keys::Config;
use super::validate::Resolved;

/// A config that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads and parses the config file, reads the files it names, and checks the lot. Each
    /// step is its own function: `parse`, `read_files`, `validate_with`.
    pub fn load(path: &Path) -> Result<(Config, Resolved), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_owned(),
            message,
        })?;
        let files = config.read_files();
        let resolved = config
            .validate_with(&files)
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })?;
        Ok((config, resolved))
    }

    /// Reads the files the config names, then checks everything serde cannot
    /// (`validate_with`).
    pub fn validate(&self) -> Result<Resolved, Vec<String>> {
        self.validate_with(&self.read_files())
    }

    /// Reads the files the config names (`named_files`), for `validate_with`.
    pub fn read_files(&self) -> ConfigFiles {
        ConfigFiles::read(self.named_files())
    }
}
