//! The configuration: the FHIR anonymization tool's JSON format (`fhirVersion`,
//! `processingError`, `fhirPathRules`, `parameters`), parsed and checked up front so that a
//! bad configuration fails before any data is read.

use crate::error::ConfigError;
use salus_fhirpath::Expr;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::LazyLock;

/// The HIPAA Safe Harbor configuration shipped with the crate (see `docs/deid.md`).
pub const SAFE_HARBOR_JSON: &str = include_str!("../configs/safe-harbor.json");

/// What to do when a resource cannot be processed (a date that does not parse, a FHIRPath
/// evaluation error, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessingErrorMode {
    /// Stop with the error (the default).
    Raise,
    /// Leave the resource out of the output and count it.
    Skip,
}

/// Which dates shift together (`dateShiftScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateShiftScope {
    /// The offset comes from the key and the resource id: one offset per resource.
    Resource,
    /// The offset comes from the key and the file name given to the NDJSON helper.
    File,
    /// The offset comes from the key alone: one offset for everything processed.
    Folder,
}

/// `perturb`'s `rangeType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeType {
    /// Noise uniform in `[-span/2, +span/2]`.
    Fixed,
    /// Noise uniform in `[-span·|v|/2, +span·|v|/2]`.
    Proportional,
}

/// `generalize`'s `otherValues`: what happens to a value no case matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherValues {
    Redact,
    Keep,
}

/// One generalization case: a FHIRPath predicate on the value (`$this`) and the FHIRPath
/// expression giving the replacement.
#[derive(Debug, Clone)]
pub struct Case {
    pub condition: Expr,
    pub value: Expr,
}

/// A de-identification method and its settings.
#[derive(Debug, Clone)]
pub enum Method {
    Keep,
    Redact,
    DateShift,
    CryptoHash,
    Encrypt,
    Substitute {
        replace_with: Value,
    },
    Perturb {
        span: f64,
        range_type: RangeType,
        round_to: u32,
    },
    Generalize {
        cases: Vec<Case>,
        other_values: OtherValues,
    },
    /// Salus addition: the free-text PHI scrubber (names, dates, phone numbers, ... replaced
    /// by placeholders such as `[NAME]`).
    Scrub,
}

impl Method {
    /// The method's name as written in configurations.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Keep => "keep",
            Method::Redact => "redact",
            Method::DateShift => "dateShift",
            Method::CryptoHash => "cryptoHash",
            Method::Encrypt => "encrypt",
            Method::Substitute { .. } => "substitute",
            Method::Perturb { .. } => "perturb",
            Method::Generalize { .. } => "generalize",
            Method::Scrub => "scrub",
        }
    }
}

/// `nodesByType('X')` or `nodesByName('X')`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodesBy {
    Type,
    Name,
}

/// A rule path, compiled.
#[derive(Debug, Clone)]
pub(crate) enum CompiledPath {
    /// A plain FHIRPath expression evaluated on the resource.
    Expr {
        expr: Expr,
        /// The concrete resource type the path starts with (`Patient.name`), if any: the
        /// rule is skipped for other resources without evaluating it.
        resource_type: Option<String>,
    },
    /// `[Type.]nodesByType('X')[.rest]` / `nodesByName('X')[.rest]`: every node of the
    /// type (or element name) anywhere in the resource, extensions included, then `rest`
    /// evaluated on them.
    NodesBy {
        resource_type: Option<String>,
        by: NodesBy,
        arg: String,
        rest: Option<Expr>,
    },
}

impl CompiledPath {
    pub(crate) fn resource_type(&self) -> Option<&str> {
        match self {
            CompiledPath::Expr { resource_type, .. }
            | CompiledPath::NodesBy { resource_type, .. } => resource_type.as_deref(),
        }
    }
}

/// One entry of `fhirPathRules`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The path as written.
    pub path: String,
    pub method: Method,
    pub(crate) compiled: CompiledPath,
}

/// `parameters`. Keys are secrets: `Debug` does not print them.
#[derive(Clone)]
pub struct Parameters {
    /// Key for the date-shift offsets; empty: a random key per [`crate::Anonymizer`].
    pub date_shift_key: String,
    pub date_shift_scope: DateShiftScope,
    /// A fixed offset in days, used instead of the derived one.
    pub date_shift_fixed_offset_in_days: Option<i64>,
    /// HMAC-SHA256 key; empty: a random key per [`crate::Anonymizer`].
    pub crypto_hash_key: String,
    /// AES key: 16, 24 or 32 bytes of UTF-8 (AES-128/192/256).
    pub encrypt_key: String,
    /// `redact` keeps ages of 89 years or less (`Age` values).
    pub enable_partial_ages_for_redact: bool,
    /// `redact` keeps the year of dates (unless it indicates an age over 89).
    pub enable_partial_dates_for_redact: bool,
    /// `redact` keeps the first 3 digits of postal codes (`000` for restricted areas).
    pub enable_partial_zip_codes_for_redact: bool,
    /// 3-digit ZIP prefixes with 20,000 people or fewer, redacted to `000`.
    pub restricted_zip_code_tabulation_areas: Vec<String>,
    /// Salus addition (`enableFreeTextScrubbing`, default true): free-text nodes that no
    /// rule processed (narrative `div`, `Annotation.text`, `comment`, `description`,
    /// Attachment `data` and `title`) go through the PHI scrubber.
    pub enable_free_text_scrubbing: bool,
}

impl fmt::Debug for Parameters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &str| if s.is_empty() { "<random>" } else { "<set>" };
        f.debug_struct("Parameters")
            .field("date_shift_key", &secret(&self.date_shift_key))
            .field("date_shift_scope", &self.date_shift_scope)
            .field(
                "date_shift_fixed_offset_in_days",
                &self.date_shift_fixed_offset_in_days,
            )
            .field("crypto_hash_key", &secret(&self.crypto_hash_key))
            .field("encrypt_key", &secret(&self.encrypt_key))
            .field(
                "enable_partial_ages_for_redact",
                &self.enable_partial_ages_for_redact,
            )
            .field(
                "enable_partial_dates_for_redact",
                &self.enable_partial_dates_for_redact,
            )
            .field(
                "enable_partial_zip_codes_for_redact",
                &self.enable_partial_zip_codes_for_redact,
            )
            .field(
                "restricted_zip_code_tabulation_areas",
                &self.restricted_zip_code_tabulation_areas,
            )
            .field(
                "enable_free_text_scrubbing",
                &self.enable_free_text_scrubbing,
            )
            .finish()
    }
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            date_shift_key: String::new(),
            date_shift_scope: DateShiftScope::Resource,
            date_shift_fixed_offset_in_days: None,
            crypto_hash_key: String::new(),
            encrypt_key: String::new(),
            enable_partial_ages_for_redact: false,
            enable_partial_dates_for_redact: false,
            enable_partial_zip_codes_for_redact: false,
            restricted_zip_code_tabulation_areas: Vec::new(),
            enable_free_text_scrubbing: true,
        }
    }
}

/// A parsed, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub fhir_version: String,
    pub processing_error: ProcessingErrorMode,
    pub rules: Vec<Rule>,
    pub parameters: Parameters,
}

static NODES_BY: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^\s*(?:([A-Za-z][A-Za-z0-9]*)\s*\.\s*)?(nodesByType|nodesByName)\s*\(\s*'((?:[^'\\]|\\.)*)'\s*\)\s*(.*)$",
    )
    .expect("static regex")
});

static LEADING_TYPE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^\s*([A-Z][A-Za-z0-9]*)\s*(?:\.|$)").expect("static regex")
});

fn get_bool(params: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ConfigError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(ConfigError::BadParameter {
            name: key,
            message: "expected true or false".into(),
        }),
    }
}

fn get_string(params: &Map<String, Value>, key: &'static str) -> Result<String, ConfigError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ConfigError::BadParameter {
            name: key,
            message: "expected a string".into(),
        }),
    }
}

fn compile_path(index: usize, path: &str) -> Result<CompiledPath, ConfigError> {
    let bad = |message: String| ConfigError::BadPath {
        index,
        path: path.to_string(),
        message,
    };
    if let Some(c) = NODES_BY.captures(path) {
        let resource_type = c.get(1).map(|m| m.as_str().to_string());
        if let Some(rt) = &resource_type {
            if !salus_fhir::defs::type_def(rt)
                .is_some_and(|t| t.kind == salus_fhir::defs::TypeKind::Resource)
            {
                return Err(bad(format!("'{rt}' is not a resource type")));
            }
        }
        let by = if &c[2] == "nodesByType" {
            NodesBy::Type
        } else {
            NodesBy::Name
        };
        let arg = c[3].replace("\\'", "'");
        if arg.is_empty() {
            return Err(bad(format!("{}() needs a non-empty name", &c[2])));
        }
        let rest = c[4].trim();
        if rest.contains("nodesByType") || rest.contains("nodesByName") {
            return Err(bad(
                "nodesByType()/nodesByName() may appear only once, at the start of a path".into(),
            ));
        }
        let rest = if rest.is_empty() {
            None
        } else if rest.starts_with('.') || rest.starts_with('[') {
            Some(Expr::parse(&format!("$this{rest}")).map_err(|e| bad(e.to_string()))?)
        } else {
            return Err(bad(format!("unexpected `{rest}` after {}('{arg}')", &c[2])));
        };
        let resource_type = resource_type.filter(|t| salus_fhir::defs::is_resource_type(t));
        return Ok(CompiledPath::NodesBy {
            resource_type,
            by,
            arg,
            rest,
        });
    }
    if path.contains("nodesByType") || path.contains("nodesByName") {
        return Err(bad(
            "nodesByType()/nodesByName() may appear only once, at the start of a path".into(),
        ));
    }
    let expr = Expr::parse(path).map_err(|e| bad(e.to_string()))?;
    let resource_type = if path.contains('|') {
        None
    } else {
        LEADING_TYPE
            .captures(path)
            .map(|c| c[1].to_string())
            .filter(|t| salus_fhir::defs::is_resource_type(t))
    };
    Ok(CompiledPath::Expr {
        expr,
        resource_type,
    })
}

fn parse_method(index: usize, rule: &Map<String, Value>) -> Result<Method, ConfigError> {
    let name = match rule.get("method") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => {
            return Err(ConfigError::MissingField {
                index,
                field: "method",
            })
        }
        Some(_) => {
            return Err(ConfigError::WrongType {
                field: format!("fhirPathRules[{index}].method"),
                expected: "a string",
            })
        }
    };
    let bad = |message: String| ConfigError::BadRule { index, message };
    Ok(match name.to_ascii_lowercase().as_str() {
        "keep" => Method::Keep,
        "redact" => Method::Redact,
        "dateshift" => Method::DateShift,
        "cryptohash" => Method::CryptoHash,
        "encrypt" => Method::Encrypt,
        "scrub" => Method::Scrub,
        "substitute" => match rule.get("replaceWith") {
            None => {
                return Err(ConfigError::MissingField {
                    index,
                    field: "replaceWith",
                })
            }
            Some(v) => Method::Substitute {
                replace_with: v.clone(),
            },
        },
        "perturb" => {
            let span = match rule.get("span") {
                None => {
                    return Err(ConfigError::MissingField {
                        index,
                        field: "span",
                    })
                }
                Some(v) => v
                    .as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .ok_or_else(|| bad("span must be a number".into()))?,
            };
            if !span.is_finite() || span < 0.0 {
                return Err(bad(format!(
                    "span must be a non-negative number, not {span}"
                )));
            }
            let range_type = match rule.get("rangeType").and_then(Value::as_str) {
                None => RangeType::Fixed,
                Some(s) if s.eq_ignore_ascii_case("fixed") => RangeType::Fixed,
                Some(s) if s.eq_ignore_ascii_case("proportional") => RangeType::Proportional,
                Some(s) => {
                    return Err(bad(format!(
                        "rangeType must be 'fixed' or 'proportional', not '{s}'"
                    )))
                }
            };
            let round_to = match rule.get("roundTo") {
                None | Some(Value::Null) => 2,
                Some(v) => match v.as_u64() {
                    Some(n) if n <= 28 => n as u32,
                    _ => return Err(bad("roundTo must be an integer from 0 to 28".into())),
                },
            };
            Method::Perturb {
                span,
                range_type,
                round_to,
            }
        }
        "generalize" => {
            let cases = match rule.get("cases") {
                Some(Value::Object(m)) => m,
                None => {
                    return Err(ConfigError::MissingField {
                        index,
                        field: "cases",
                    })
                }
                Some(_) => {
                    return Err(bad(
                        "cases must be an object of FHIRPath predicate → FHIRPath value".into(),
                    ))
                }
            };
            let mut out = Vec::with_capacity(cases.len());
            for (cond, value) in cases {
                let condition = Expr::parse(cond).map_err(|e| ConfigError::BadPath {
                    index,
                    path: cond.clone(),
                    message: format!("generalize case condition: {e}"),
                })?;
                let value_src = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(bad(format!("generalize case `{cond}`: the value must be a FHIRPath expression (a string)"))),
                };
                let value = Expr::parse(&value_src).map_err(|e| ConfigError::BadPath {
                    index,
                    path: value_src.clone(),
                    message: format!("generalize case value (string literals need quotes, e.g. \"'adult'\"): {e}"),
                })?;
                out.push(Case { condition, value });
            }
            let other_values = match rule.get("otherValues").and_then(Value::as_str) {
                None => OtherValues::Redact,
                Some(s) if s.eq_ignore_ascii_case("redact") => OtherValues::Redact,
                Some(s) if s.eq_ignore_ascii_case("keep") => OtherValues::Keep,
                Some(s) => {
                    return Err(bad(format!(
                        "otherValues must be 'redact' or 'keep', not '{s}'"
                    )))
                }
            };
            Method::Generalize {
                cases: out,
                other_values,
            }
        }
        _ => {
            return Err(ConfigError::UnknownMethod {
                index,
                method: name,
            })
        }
    })
}

fn parse_parameters(v: Option<&Value>) -> Result<Parameters, ConfigError> {
    let mut p = Parameters::default();
    let params = match v {
        None | Some(Value::Null) => return Ok(p),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ConfigError::WrongType {
                field: "parameters".into(),
                expected: "an object",
            })
        }
    };
    const KNOWN: &[&str] = &[
        "dateShiftKey",
        "dateShiftScope",
        "dateShiftFixedOffsetInDays",
        "cryptoHashKey",
        "encryptKey",
        "enablePartialAgesForRedact",
        "enablePartialDatesForRedact",
        "enablePartialZipCodesForRedact",
        "restrictedZipCodeTabulationAreas",
        "enableFreeTextScrubbing",
    ];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ConfigError::UnknownParameter(unknown.clone()));
    }
    p.date_shift_key = get_string(params, "dateShiftKey")?;
    p.crypto_hash_key = get_string(params, "cryptoHashKey")?;
    p.encrypt_key = get_string(params, "encryptKey")?;
    if !p.encrypt_key.is_empty() && ![16, 24, 32].contains(&p.encrypt_key.len()) {
        return Err(ConfigError::BadParameter {
            name: "encryptKey",
            message: format!(
                "must be 16, 24 or 32 bytes (AES-128/192/256), not {} bytes",
                p.encrypt_key.len()
            ),
        });
    }
    let scope = get_string(params, "dateShiftScope")?;
    p.date_shift_scope = match scope.to_ascii_lowercase().as_str() {
        "" | "resource" => DateShiftScope::Resource,
        "file" => DateShiftScope::File,
        "folder" => DateShiftScope::Folder,
        _ => {
            return Err(ConfigError::BadParameter {
                name: "dateShiftScope",
                message: format!("must be 'resource', 'file' or 'folder', not '{scope}'"),
            })
        }
    };
    p.date_shift_fixed_offset_in_days = match params.get("dateShiftFixedOffsetInDays") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n.abs() <= 365 * 100 => Some(n),
            _ => {
                return Err(ConfigError::BadParameter {
                    name: "dateShiftFixedOffsetInDays",
                    message: "must be an integer number of days (at most 36500 either way)".into(),
                })
            }
        },
    };
    if let Some(b) = get_bool(params, "enablePartialAgesForRedact")? {
        p.enable_partial_ages_for_redact = b;
    }
    if let Some(b) = get_bool(params, "enablePartialDatesForRedact")? {
        p.enable_partial_dates_for_redact = b;
    }
    if let Some(b) = get_bool(params, "enablePartialZipCodesForRedact")? {
        p.enable_partial_zip_codes_for_redact = b;
    }
    if let Some(b) = get_bool(params, "enableFreeTextScrubbing")? {
        p.enable_free_text_scrubbing = b;
    }
    match params.get("restrictedZipCodeTabulationAreas") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for z in a {
                let z = match z {
                    Value::String(s) => s.trim().to_string(),
                    Value::Number(n) => format!("{:03}", n.as_u64().unwrap_or(1000)),
                    _ => String::new(),
                };
                if z.len() != 3 || !z.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ConfigError::BadParameter {
                        name: "restrictedZipCodeTabulationAreas",
                        message: format!("'{z}' is not a 3-digit ZIP prefix"),
                    });
                }
                p.restricted_zip_code_tabulation_areas.push(z);
            }
        }
        Some(_) => {
            return Err(ConfigError::BadParameter {
                name: "restrictedZipCodeTabulationAreas",
                message: "expected an array of 3-digit strings".into(),
            })
        }
    }
    Ok(p)
}

impl Config {
    /// Parse and check a configuration in the FHIR anonymization tool's format.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        Self::from_value(&v)
    }

    /// Parse and check a configuration already read as JSON.
    pub fn from_value(v: &Value) -> Result<Config, ConfigError> {
        let obj = v.as_object().ok_or(ConfigError::NotAnObject)?;
        let fhir_version = match obj.get("fhirVersion") {
            None | Some(Value::Null) => "R4".to_string(),
            Some(Value::String(s)) => {
                let ok = s.is_empty() || s.eq_ignore_ascii_case("r4") || s.starts_with("4.0");
                if !ok {
                    return Err(ConfigError::FhirVersion(s.clone()));
                }
                s.clone()
            }
            Some(_) => {
                return Err(ConfigError::WrongType {
                    field: "fhirVersion".into(),
                    expected: "a string",
                })
            }
        };
        let processing_error = match obj.get("processingError") {
            None | Some(Value::Null) => ProcessingErrorMode::Raise,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("raise") => ProcessingErrorMode::Raise,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("skip") => ProcessingErrorMode::Skip,
            Some(Value::String(s)) => return Err(ConfigError::ProcessingError(s.clone())),
            Some(_) => {
                return Err(ConfigError::WrongType {
                    field: "processingError".into(),
                    expected: "a string",
                })
            }
        };
        let parameters = parse_parameters(obj.get("parameters"))?;
        let rules_json = match obj.get("fhirPathRules") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => &a[..],
            Some(_) => {
                return Err(ConfigError::WrongType {
                    field: "fhirPathRules".into(),
                    expected: "an array of rules",
                })
            }
        };
        let mut rules = Vec::with_capacity(rules_json.len());
        for (index, r) in rules_json.iter().enumerate() {
            let r = r.as_object().ok_or_else(|| ConfigError::WrongType {
                field: format!("fhirPathRules[{index}]"),
                expected: "an object with `path` and `method`",
            })?;
            let path = match r.get("path") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                Some(Value::String(_)) | None | Some(Value::Null) => {
                    return Err(ConfigError::MissingField {
                        index,
                        field: "path",
                    })
                }
                Some(_) => {
                    return Err(ConfigError::WrongType {
                        field: format!("fhirPathRules[{index}].path"),
                        expected: "a string",
                    })
                }
            };
            let method = parse_method(index, r)?;
            if matches!(method, Method::Encrypt) && parameters.encrypt_key.is_empty() {
                return Err(ConfigError::BadParameter {
                    name: "encryptKey",
                    message: format!(
                        "rule {index} uses encrypt, which needs a 16, 24 or 32 byte encryptKey"
                    ),
                });
            }
            let compiled = compile_path(index, &path)?;
            rules.push(Rule {
                path,
                method,
                compiled,
            });
        }
        Ok(Config {
            fhir_version,
            processing_error,
            rules,
            parameters,
        })
    }

    /// The shipped HIPAA Safe Harbor configuration (random keys unless set afterwards).
    pub fn safe_harbor() -> Config {
        Config::from_json(SAFE_HARBOR_JSON).expect("the shipped Safe Harbor configuration parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_forms() {
        match compile_path(0, "nodesByType('Address').country").unwrap() {
            CompiledPath::NodesBy {
                by,
                arg,
                rest,
                resource_type,
            } => {
                assert_eq!(
                    (by, arg.as_str(), resource_type),
                    (NodesBy::Type, "Address", None)
                );
                assert_eq!(rest.unwrap().source(), "$this.country");
            }
            other => panic!("{other:?}"),
        }
        match compile_path(0, " Patient.nodesByName( 'div' ) ").unwrap() {
            CompiledPath::NodesBy {
                by,
                resource_type,
                rest,
                ..
            } => {
                assert_eq!(by, NodesBy::Name);
                assert_eq!(resource_type.as_deref(), Some("Patient"));
                assert!(rest.is_none());
            }
            other => panic!("{other:?}"),
        }
        let p = compile_path(0, "Patient.name.family").unwrap();
        assert_eq!(p.resource_type(), Some("Patient"));
        assert_eq!(
            compile_path(0, "Resource.id").unwrap().resource_type(),
            None
        );
        assert_eq!(
            compile_path(0, "Patient.id | Practitioner.id")
                .unwrap()
                .resource_type(),
            None
        );
        assert!(compile_path(0, "nodesByType('X')[0]").is_ok());
        assert!(compile_path(0, "name.where(nodesByName('x'))").is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let p = Parameters {
            crypto_hash_key: "hunter2".into(),
            ..Parameters::default()
        };
        let s = format!("{p:?}");
        assert!(!s.contains("hunter2"));
        assert!(s.contains("crypto_hash_key: \"<set>\""));
        assert!(s.contains("date_shift_key: \"<random>\""));
    }
}
