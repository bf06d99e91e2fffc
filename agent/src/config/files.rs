//! Reading the config files: the main file, then the `config.d/*.toml` drop-ins in name order,
//! merged key by key (a later file wins), with the file each value came from kept for the
//! problems' sake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::check::{Check, describe};
use super::fields::{self, SECTIONS};
use super::{Config, ConfigError, DEFAULT_PATH, Problem};

pub(super) fn load_files(path: Option<&Path>) -> Loader {
    let main = path.map_or_else(|| PathBuf::from(DEFAULT_PATH), Path::to_owned);
    let mut loader = Loader::default();
    match std::fs::read_to_string(&main) {
        Ok(text) => loader.merge_file(&main, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_none() => {}
        Err(e) => loader.problem(Some(&main), None, format!("cannot read: {e}")),
    }
    let dropins = main.parent().unwrap_or(Path::new("/")).join("config.d");
    match std::fs::read_dir(&dropins) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for file in files {
                match std::fs::read_to_string(&file) {
                    Ok(text) => loader.merge_file(&file, &text),
                    Err(e) => loader.problem(Some(&file), None, format!("cannot read: {e}")),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => loader.problem(Some(&dropins), None, format!("cannot list drop-ins: {e}")),
    }
    loader
}

#[derive(Default, Clone)]
pub(super) struct Loader {
    merged: Table,
    /// Which file set each leaf (by dotted key), for error messages.
    origins: BTreeMap<String, PathBuf>,
    sources: Vec<PathBuf>,
    problems: Vec<Problem>,
}

impl Loader {
    pub(super) fn problem(&mut self, file: Option<&Path>, key: Option<&str>, message: String) {
        self.problems.push(Problem {
            file: file.map(Path::to_owned),
            key: key.map(str::to_owned),
            message,
        });
    }

    pub(super) fn merge_file(&mut self, file: &Path, text: &str) {
        match text.parse::<Table>() {
            Ok(table) => self.merge_table(file, table),
            Err(e) => {
                let message = e.to_string().trim_end().replace('\n', "\n    ");
                self.problem(Some(file), None, format!("not valid TOML: {message}"));
            }
        }
    }

    /// Merges a table read from `file` (already parsed) on top.
    pub(super) fn merge_table(&mut self, file: &Path, table: Table) {
        self.sources.push(file.to_owned());
        merge(&mut self.merged, table, file, "", &mut self.origins);
    }

    pub(super) fn finish(mut self, cwd: &Path) -> Result<Config, ConfigError> {
        // Each value goes to its field; an unknown section or key, or a section that is not a
        // table, is one problem, reported at its key, and the rest still load.
        let mut raw = BTreeMap::new();
        let mut misplaced = Vec::new();
        for (section, value) in std::mem::take(&mut self.merged) {
            if !SECTIONS.contains(&section.as_str()) {
                let known = SECTIONS.join(", ");
                misplaced.push((section, format!("unknown key; expected one of: {known}")));
                continue;
            }
            let Value::Table(table) = value else {
                let message = format!("expected a table [{section}], found {}", describe(&value));
                misplaced.push((section, message));
                continue;
            };
            for (name, value) in table {
                let key = format!("{section}.{name}");
                match fields::field(&key) {
                    Some(field) => {
                        raw.insert(field.key, value);
                    }
                    None => {
                        let known = fields::names(&section).join(", ");
                        misplaced.push((key, format!("unknown key; expected one of: {known}")));
                    }
                }
            }
        }
        let mut check = Check {
            origins: &self.origins,
            problems: &mut self.problems,
            raw,
        };
        for (key, message) in misplaced {
            check.fail(&key, message);
        }
        let config = check.config(cwd, std::mem::take(&mut self.sources));
        if self.problems.is_empty() {
            config.ok_or_else(unreachable_problem)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

fn unreachable_problem() -> ConfigError {
    ConfigError {
        problems: vec![Problem {
            file: None,
            key: None,
            message: "internal error: config incomplete without a reported problem".into(),
        }],
    }
}

fn merge(
    into: &mut Table,
    from: Table,
    file: &Path,
    prefix: &str,
    origins: &mut BTreeMap<String, PathBuf>,
) {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (into.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(table)) => {
                merge(existing, table, file, &path, origins);
            }
            (_, value) => {
                record_origins(&value, &path, file, origins);
                into.insert(key, value);
            }
        }
    }
}

fn record_origins(value: &Value, path: &str, file: &Path, origins: &mut BTreeMap<String, PathBuf>) {
    if let Value::Table(table) = value {
        for (key, value) in table {
            record_origins(value, &format!("{path}.{key}"), file, origins);
        }
    } else {
        origins.insert(path.to_owned(), file.to_owned());
    }
}
