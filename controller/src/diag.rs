//! Where intent came from, and errors that point back there.
//!
//! An `IntentError` names as much of the location as is known: the file, the
//! document in it (1-based), the object (`Kind/name`) and the field in manifest
//! terms. It is what the log, `status.json` and `dpu-controller status` show.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One document of one manifest file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    /// The file as the user named it: the intent dir joined with the file name.
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file, self.document)
    }
}

/// Errors one per line, for a message that lists them after a heading.
pub fn lines(errors: &[IntentError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n  ")
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IntentError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// `Kind/name`, with the manifest kind (`YusurService/web`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The field in manifest terms, e.g. `spec.ports[0].port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl IntentError {
    /// An error about a whole file (unreadable, not YAML).
    pub fn file(file: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        IntentError {
            file: Some(file.to_string()),
            document: None,
            line,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    /// An error about one document, optionally one object and field in it.
    pub fn at(
        source: &Source,
        object: Option<String>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        IntentError {
            file: Some(source.file.clone()),
            document: Some(source.document),
            line: None,
            object,
            field: field.filter(|f| !f.is_empty()),
            message: message.into(),
        }
    }

    /// An error about an object that no manifest document holds (an
    /// agent-reported workload, or a rule over the whole set).
    pub fn unsourced(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        IntentError {
            file: None,
            document: None,
            line: None,
            object: Some(object.into()),
            field: Some(field.into()).filter(|f: &String| !f.is_empty()),
            message: message.into(),
        }
    }

    pub fn with_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}

impl fmt::Display for IntentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.file.clone());
        match (self.document, self.line) {
            (Some(d), _) => parts.push(format!("document {d}")),
            (None, Some(l)) => parts.push(format!("line {l}")),
            (None, None) => {}
        }
        parts.extend(self.object.clone());
        parts.extend(self.field.clone());
        parts.push(self.message.clone());
        f.write_str(&parts.join(": "))?;
        if let (Some(_), Some(l)) = (self.document, self.line) {
            write!(f, " (line {l})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_document_object_field() {
        let s = Source {
            file: "examples/bad.yaml".into(),
            document: 2,
        };
        let e = IntentError::at(
            &s,
            Some("YusurService/web".into()),
            Some("spec.ports[0].port".into()),
            "port 0 is not allowed (1..=65535)",
        );
        assert_eq!(
            e.to_string(),
            "examples/bad.yaml: document 2: YusurService/web: spec.ports[0].port: port 0 is not allowed (1..=65535)"
        );
        let y = IntentError::file("a.yaml", Some(7), "did not find expected node content");
        assert_eq!(
            y.to_string(),
            "a.yaml: line 7: did not find expected node content"
        );
    }
}
