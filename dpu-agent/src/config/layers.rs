//! The layers of the agent config and which one set each key. The `config` crate
//! merges them (tables deep-merge, anything else replaces); this module reads the
//! files and the environment itself so that every value keeps the name of the file
//! or `DPU_AGENT_*` variable it came from, and turns deserialization errors into
//! `<origin>: <dotted key>: <message>`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use config::{FileFormat, Format, Map, Source, Value, ValueKind};

use super::{ConfigError, ENV_PREFIX};

/// One file or one environment variable, with the keys it sets.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    /// The file's path as given, or the variable's name.
    pub origin: String,
    values: Map<String, Value>,
}

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.values.clone())
    }
}

/// `<path>.d`: `/etc/dpu-agent/agent.toml` → `/etc/dpu-agent/agent.toml.d`.
pub fn drop_in_dir(path: &Path) -> PathBuf {
    let mut dir = path.as_os_str().to_os_string();
    dir.push(".d");
    PathBuf::from(dir)
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    }
}

fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let origin = path.display().to_string();
    let text = fs::read_to_string(path).map_err(read_error(path))?;
    let values = FileFormat::Toml
        .parse(Some(&origin), &text)
        .map_err(|e| ConfigError::Parse {
            path: origin.clone(),
            message: e.to_string(),
        })?;
    Ok(Layer { origin, values })
}

/// The drop-ins of `path`, in lexical order of their names: regular files (or
/// links to them) named `*.toml`. No directory means no drop-ins.
fn drop_ins(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = drop_in_dir(path);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(&dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_error(&dir))?;
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        if fs::metadata(&path).map_err(read_error(&path))?.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// `DPU_AGENT_OVS__BRIDGE=br1` → `ovs.bridge = "br1"`, one layer per variable, in
/// name order. Values are strings; the schema converts them (`"true"`, `"200"`).
fn env_layers(env: Vec<(OsString, OsString)>) -> Result<Vec<Layer>, ConfigError> {
    let mut vars = BTreeMap::new();
    for (name, value) in env {
        let Some(name) = name.to_str().map(str::to_string) else {
            continue;
        };
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        let is_key = |k: &str| {
            k.split('.').all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
        };
        if !is_key(&key) {
            return Err(ConfigError::Key {
                origin: name,
                key,
                message: format!(
                    "not a config key (want {ENV_PREFIX}<KEY>, nested keys joined by \"__\")"
                ),
            });
        }
        let Some(value) = value.to_str().map(str::to_string) else {
            return Err(ConfigError::Key {
                origin: name,
                key,
                message: "the value is not UTF-8".into(),
            });
        };
        vars.insert(name, (key, value));
    }
    Ok(vars
        .into_iter()
        .map(|(origin, (key, value))| {
            let value = Value::new(Some(&origin), ValueKind::String(value));
            Layer {
                values: Map::from_iter([(key, value)]),
                origin,
            }
        })
        .collect())
}

/// Every layer, in the order applied: the file, its drop-ins, the environment.
pub(super) fn read(path: &Path, env: Vec<(OsString, OsString)>) -> Result<Vec<Layer>, ConfigError> {
    let mut layers = vec![file_layer(path)?];
    for p in drop_ins(path)? {
        layers.push(file_layer(&p)?);
    }
    layers.extend(env_layers(env)?);
    Ok(layers)
}

/// `key` (`controller.endpoint`) in `layer`: a dotted variable's, or in a table.
fn sets(layer: &Layer, key: &str) -> bool {
    let Some((table, leaf)) = key.split_once('.') else {
        return layer.values.contains_key(key);
    };
    layer.values.contains_key(key)
        || matches!(layer.values.get(table).map(|v| &v.kind),
            Some(ValueKind::Table(t)) if t.contains_key(leaf))
}

fn unset(layer: &mut Layer, key: &str) {
    layer.values.remove(key);
    if let Some((table, leaf)) = key.split_once('.') {
        if let Some(ValueKind::Table(t)) = layer.values.get_mut(table).map(|v| &mut v.kind) {
            t.remove(leaf);
        }
    }
}

/// `keys` are one setting spelt several ways (`controller.endpoint` and
/// `controller.endpoints`): the last layer that sets any of them replaces all of
/// them from the layers before it, so later still wins. Keys of one table only.
pub(super) fn one_setting(layers: &mut [Layer], keys: &[&str]) {
    let Some(last) = layers.iter().rposition(|l| keys.iter().any(|k| sets(l, k))) else {
        return;
    };
    for layer in &mut layers[..last] {
        for k in keys {
            unset(layer, k);
        }
    }
}

/// Merges the layers (later wins) into one tree for serde.
pub(super) fn merge(layers: &[Layer]) -> Result<config::Config, config::ConfigError> {
    layers
        .iter()
        .fold(config::Config::builder(), |b, l| b.add_source(l.clone()))
        .build()
}

/// For each dotted key (tables too), the layer that set it last.
#[derive(Debug)]
pub(super) struct Origins {
    by_key: BTreeMap<String, String>,
    /// Named when no layer set a key or its table: the main file.
    main: String,
}

impl Origins {
    pub fn of(layers: &[Layer]) -> Origins {
        let mut o = Origins {
            by_key: BTreeMap::new(),
            main: layers.first().map(|l| l.origin.clone()).unwrap_or_default(),
        };
        for layer in layers {
            for (key, value) in &layer.values {
                o.record(key.clone(), value, &layer.origin);
            }
        }
        o
    }

    fn record(&mut self, key: String, value: &Value, origin: &str) {
        if let ValueKind::Table(table) = &value.kind {
            for (k, v) in table {
                self.record(format!("{key}.{k}"), v, origin);
            }
        } else {
            // A value that is not a table replaces everything below it.
            let below = |k: &String| {
                k.strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            };
            self.by_key.retain(|k, _| !below(k));
        }
        self.by_key.insert(key, origin.to_string());
    }

    /// The layer that set `key` (`shim.vfs[0].vf`), or else its nearest table or
    /// array; the main file if none did.
    pub fn of_key(&self, key: &str) -> &str {
        let mut k = key;
        loop {
            if let Some(o) = self.by_key.get(k) {
                return o;
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => return &self.main,
            }
        }
    }

    pub fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Key {
            origin: self.of_key(key).to_string(),
            key: key.to_string(),
            message,
        }
    }

    /// A serde error from the merged tree, with the key and the layer that set it.
    pub fn explain(&self, e: config::ConfigError) -> ConfigError {
        match e {
            config::ConfigError::Type {
                unexpected,
                expected,
                key,
                ..
            } => self.invalid(
                key.as_deref().unwrap_or_default(),
                format!("invalid type: {unexpected}, expected {expected}"),
            ),
            config::ConfigError::NotFound(key) => {
                let var = format!(
                    "{ENV_PREFIX}{}",
                    key.to_ascii_uppercase().replace('.', "__")
                );
                self.invalid(&key, format!("missing: no file, drop-in or {var} sets it"))
            }
            config::ConfigError::At {
                error,
                key: Some(key),
                ..
            } => self.keyed(&key, error.to_string()),
            config::ConfigError::Message(m) => self.keyed("", m),
            other => ConfigError::Parse {
                path: self.main.clone(),
                message: other.to_string(),
            },
        }
    }

    /// serde reports an unknown key as "unknown field `x`, expected ..." about
    /// the table it is in; the key then is `<table>.x`.
    fn keyed(&self, table: &str, message: String) -> ConfigError {
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once("`, "));
        match unknown {
            Some((field, expected)) => {
                let key = if table.is_empty() {
                    field.to_string()
                } else {
                    format!("{table}.{field}")
                };
                self.invalid(&key, format!("unknown key ({expected})"))
            }
            None => self.invalid(table, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    use super::super::tests::GOOD;

    /// A main file `agent.toml` with `drop_ins` (name, text) in `agent.toml.d/`.
    fn setup(main: &str, drop_ins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        fs::write(&path, main).unwrap();
        if !drop_ins.is_empty() {
            let d = drop_in_dir(&path);
            fs::create_dir(&d).unwrap();
            for (name, text) in drop_ins {
                fs::write(d.join(name), text).unwrap();
            }
        }
        (dir, path)
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn load(path: &Path, vars: &[(&str, &str)]) -> Result<super::super::Loaded, String> {
        Config::load_layers(path, env(vars)).map_err(|e| e.to_string())
    }

    #[test]
    fn file_then_drop_in_then_environment() {
        let (_d, path) = setup(
            &format!("{GOOD}bridge = \"br-file\"\n"),
            &[("50-x.toml", "[ovs]\nbridge = \"br-dropin\"\n")],
        );
        let dropin = drop_in_dir(&path).join("50-x.toml");
        let l = load(&path, &[]).unwrap();
        assert_eq!(l.config.ovs.bridge, "br-dropin");
        // The drop-in's [ovs] merges into the file's: the file's keys stay.
        assert_eq!(l.config.ovs.run_dir, Path::new("/run/openvswitch"));
        assert_eq!(
            l.sources,
            [path.display().to_string(), dropin.display().to_string()]
        );

        let l = load(
            &path,
            &[("DPU_AGENT_OVS__BRIDGE", "br-env"), ("HOME", "/x")],
        )
        .unwrap();
        assert_eq!(l.config.ovs.bridge, "br-env");
        assert_eq!(l.sources.last().unwrap(), "DPU_AGENT_OVS__BRIDGE");
    }

    #[test]
    fn drop_ins_apply_in_lexical_order_and_only_toml_files() {
        let (_d, path) = setup(
            GOOD,
            &[
                // Written out of order on purpose.
                ("20-b.toml", "[ovs]\nbridge = \"br-20\"\n"),
                (
                    "10-a.toml",
                    "[ovs]\nbridge = \"br-10\"\nhw_offload = true\n",
                ),
                ("30-c.toml.bak", "not toml at all ["),
                ("README", "not toml at all ["),
            ],
        );
        fs::create_dir(drop_in_dir(&path).join("40-dir.toml")).unwrap();
        let l = load(&path, &[]).unwrap();
        assert_eq!(l.config.ovs.bridge, "br-20");
        assert!(l.config.ovs.hw_offload);
        let names: Vec<_> = l
            .sources
            .iter()
            .map(|s| s.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["agent.toml", "10-a.toml", "20-b.toml"]);
    }

    #[test]
    fn an_unknown_key_names_the_drop_in() {
        let (_d, path) = setup(GOOD, &[("50-x.toml", "[ovs]\nbridge_typo = 1\n")]);
        let e = load(&path, &[]).unwrap_err();
        let want = format!(
            "{}: ovs.bridge_typo: unknown key (expected one of",
            drop_in_dir(&path).join("50-x.toml").display()
        );
        assert!(e.starts_with(&want), "{e}");

        let (_d, path) = setup(GOOD, &[("50-x.toml", "surprise = true\n")]);
        let e = load(&path, &[]).unwrap_err();
        assert!(e.contains("50-x.toml: surprise: unknown key"), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_layer_that_set_it() {
        let (_d, path) = setup(GOOD, &[("50-x.toml", "[ovs]\ndatapath_type = \"foo\"\n")]);
        let e = load(&path, &[]).unwrap_err();
        let want = format!(
            "{}: ovs.datapath_type: \"foo\": want \"netdev\" or \"system\"",
            drop_in_dir(&path).join("50-x.toml").display()
        );
        assert_eq!(e, want);

        // The environment overrides the drop-in and takes the blame.
        let e = load(&path, &[("DPU_AGENT_OVS__DATAPATH_TYPE", "dpdk")]).unwrap_err();
        assert_eq!(
            e,
            "DPU_AGENT_OVS__DATAPATH_TYPE: ovs.datapath_type: \"dpdk\": want \"netdev\" or \"system\""
        );
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_layer() {
        let (_d, path) = setup(GOOD, &[]);
        let e = load(&path, &[("DPU_AGENT_OVS__HW_OFFLOAD", "maybe")]).unwrap_err();
        assert!(
            e.starts_with(
                "DPU_AGENT_OVS__HW_OFFLOAD: ovs.hw_offload: invalid type: string \"maybe\""
            ),
            "{e}"
        );
        let l = load(&path, &[("DPU_AGENT_OVS__HW_OFFLOAD", "true")]).unwrap();
        assert!(l.config.ovs.hw_offload);

        let (_d, path) = setup(&format!("{GOOD}[controller.x]\n"), &[]);
        let e = load(&path, &[]).unwrap_err();
        assert!(e.contains("agent.toml: controller.x: unknown key"), "{e}");

        let (_d, path) = setup(
            GOOD,
            &[(
                "50-x.toml",
                "[shim]\nlisten = \"169.254.0.1:1\"\nclient_name = \"shim\"\nmtu = \"big\"\n",
            )],
        );
        let e = load(&path, &[]).unwrap_err();
        assert!(e.contains("50-x.toml: shim.mtu: invalid type"), "{e}");
    }

    #[test]
    fn array_entries_blame_the_layer_that_set_the_array() {
        let shim = "[shim]\nlisten = \"169.254.0.1:1\"\nclient_name = \"shim\"\n";
        let (_d, path) = setup(
            &format!("{GOOD}{shim}[[shim.vfs]]\nvf = \"a\"\nrepresentor = \"r\"\n"),
            &[(
                "50-x.toml",
                "[[shim.vfs]]\nvf = \"b\"\nrepresentor = \"r\"\ncolour = 1\n",
            )],
        );
        let e = load(&path, &[]).unwrap_err();
        assert!(
            e.contains("50-x.toml: shim.vfs[0].colour: unknown key"),
            "{e}"
        );
    }

    #[test]
    fn missing_keys_say_how_to_set_them() {
        let (_d, path) = setup(&GOOD.replace("ca_file = \"ca.pem\"\n", ""), &[]);
        let e = load(&path, &[]).unwrap_err();
        assert!(
            e.ends_with(
                "agent.toml: controller.ca_file: missing: no file, drop-in or DPU_AGENT_CONTROLLER__CA_FILE sets it"
            ),
            "{e}"
        );
    }

    #[test]
    fn files_that_cannot_be_read_or_parsed_are_named() {
        let (_d, path) = setup(GOOD, &[("50-x.toml", "[ovs\n")]);
        let e = load(&path, &[]).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{}:",
                drop_in_dir(&path).join("50-x.toml").display()
            )),
            "{e}"
        );

        let e = load(Path::new("/nonexistent/agent.toml"), &[]).unwrap_err();
        assert!(
            e.starts_with("/nonexistent/agent.toml: cannot read:"),
            "{e}"
        );
    }

    #[test]
    fn environment_names_must_be_keys() {
        let (_d, path) = setup(GOOD, &[]);
        let e = load(&path, &[("DPU_AGENT_OVS__", "x")]).unwrap_err();
        assert!(
            e.starts_with("DPU_AGENT_OVS__: ovs.: not a config key"),
            "{e}"
        );
        let e = load(&path, &[("DPU_AGENT_OVS__COLOUR", "x")]).unwrap_err();
        assert!(
            e.starts_with("DPU_AGENT_OVS__COLOUR: ovs.colour: unknown key"),
            "{e}"
        );
    }
}
