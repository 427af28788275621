//! No input makes the crate panic: random and mutated templates, messages, rules, stored
//! Observations and expressions.

mod common;

use salus_devices::expression::{Expression, Language};
use salus_devices::fhir::FhirTemplates;
use salus_devices::identity::{plan, IdentityMode, MappingConfig, NoDevices};
use salus_devices::jsonpath::JsonPath;
use salus_devices::{merge, ContentTemplates, RuleEngine, RuleSet};
use serde_json::{json, Map, Value};
use time::macros::datetime;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn text(&mut self, alphabet: &str, max: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        (0..self.below(max))
            .map(|_| chars[self.below(chars.len())])
            .collect()
    }
    fn value(&mut self, depth: usize) -> Value {
        let names = [
            "heartrate",
            "Body",
            "telemetry",
            "device",
            "date",
            "matchedToken",
            "systolic",
            "SystemProperties",
            "x",
        ];
        match if depth > 4 {
            self.below(5)
        } else {
            self.below(8)
        } {
            0 => Value::Null,
            1 => json!(self.below(2) == 0),
            2 => json!(self.next() as i64 % 1000),
            3 => json!(self.pick(&[
                "2024-01-01T00:00:00Z",
                "",
                "nan",
                "1e999",
                "-0",
                "78",
                "2019-02-01T22:46:01.8750000Z"
            ])),
            4 => json!(self.text("ab$.@[]()?*'\"0-9 ", 12)),
            5 | 6 => {
                let mut m = Map::new();
                for _ in 0..self.below(5) {
                    let k = self.pick(&names).to_string();
                    m.insert(k, self.value(depth + 1));
                }
                Value::Object(m)
            }
            _ => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
        }
    }
}

const PATH_ALPHABET: &str = "$@.[]()?*'\"!=<>&|,:-0123456789 abcxyzBody";
const JMES_ALPHABET: &str = "@.[]()?*`'\"!=<>&|,:-012 abctomulpyd_{}";

#[test]
fn random_expressions() {
    let mut rng = Rng(0x5eed_1234_abcd);
    let data: Vec<Value> = (0..20).map(|_| rng.value(0)).collect();
    for _ in 0..20_000 {
        let p = rng.text(PATH_ALPHABET, 30);
        if let Ok(path) = JsonPath::parse(&p) {
            for d in &data[..3] {
                let _ = path.select(d);
            }
        }
        let j = rng.text(JMES_ALPHABET, 30);
        if let Ok(e) = Expression::compile(&j, Language::JmesPath) {
            let _ = e.matches(&data[rng.below(data.len())]);
        }
    }
    for f in [
        "multiply(@, `1e308`)",
        "divide(`1`, `0`)",
        "fromUnixTimestamp(`1e300`)",
        "pow(`10`, `400`)",
        "insertString('a', 'b', `-1`)",
    ] {
        let e = Expression::compile(f, Language::JmesPath).unwrap();
        assert!(e.first(&json!(1e308)).is_err() || e.first(&json!(1e308)).is_ok());
    }
}

#[test]
fn random_templates_and_messages() {
    let mut rng = Rng(0xdead_beef_0042);
    let kinds = [
        "CollectionContent",
        "JsonPathContent",
        "IotJsonPathContent",
        "IotCentralJsonPathContent",
        "CalculatedContent",
        "CollectionFhir",
        "CodeValueFhir",
        "",
        "x",
    ];
    let keys = [
        "typeName",
        "typeMatchExpression",
        "deviceIdExpression",
        "timestampExpression",
        "patientIdExpression",
        "values",
        "valueName",
        "valueExpression",
        "required",
        "codes",
        "value",
        "valueType",
        "defaultPeriod",
        "periodInterval",
        "components",
        "category",
        "language",
        "defaultExpressionLanguage",
    ];
    for _ in 0..5_000 {
        let mut t = Map::new();
        for _ in 0..rng.below(8) {
            let k = rng.pick(&keys).to_string();
            let v = match rng.below(4) {
                0 => json!(rng.pick(&[
                    "$..[?(@heartrate)]",
                    "$.device",
                    "to_array(@)[?x]",
                    "SampledData",
                    "true"
                ])),
                1 => json!([{"valueName": "v", "valueExpression": "$.x", "required": "true"}]),
                2 => {
                    json!({"value": "$.x", "language": rng.pick(&["JsonPath", "JmesPath", "Lua"])})
                }
                _ => rng.value(2),
            };
            t.insert(k, v);
        }
        let item = json!({"templateType": rng.pick(&kinds), "template": Value::Object(t)});
        let doc = if rng.below(2) == 0 {
            json!({"templateType": rng.pick(&kinds), "template": [item]})
        } else {
            item
        };
        if let Ok(c) = ContentTemplates::from_value(&doc) {
            for _ in 0..3 {
                let _ = c.normalize(&rng.value(0));
            }
        }
        let _ = FhirTemplates::from_value(&doc);
        let _ = ContentTemplates::from_json_str(&rng.text("{}[]\":,abc0 \u{feff}", 40));
    }
}

#[test]
fn mutated_shared_templates() {
    let Some(dir) = common::devices_dir("mutated_shared_templates") else {
        return;
    };
    let mut rng = Rng(0x0bad_cafe);
    let files = [
        "templates/healthkitOnFhir/devicecontent.json",
        "templates/healthkitOnFhir/fhirmapping.json",
        "templates/sandbox/devicecontent.json",
        "test-input/data_CollectionContentTemplateHrAndStepsJmesPath.json",
        "test-input/data_Documentation_CalculatedFunction_TransformData_Template.json",
    ];
    for f in files {
        let text = common::read(&dir, f);
        let bytes = text.as_bytes();
        for _ in 0..300 {
            let mut b = bytes.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                match rng.below(3) {
                    0 => b[i] = b"{}[]\":,$@.?()x0 "[rng.below(16)],
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, b"\"{[,"[rng.below(4)]),
                }
            }
            let s = String::from_utf8_lossy(&b);
            if let Ok(c) = ContentTemplates::from_json_str(&s) {
                let _ = c.normalize(&rng.value(0));
            }
            let _ = FhirTemplates::from_json_str(&s);
        }
    }
}

#[test]
fn junk_into_mapping_merge_and_rules() {
    let mut rng = Rng(0x1234_5678);
    let fhir = FhirTemplates::from_value(&json!({"templateType": "CollectionFhir", "template": [
        {"templateType": "CodeValueFhir", "template": {"typeName": "hr", "periodInterval": 60, "codes": [{"code": "8867-4"}],
          "value": {"valueName": "hr", "valueType": "SampledData", "defaultPeriod": 1000}}},
        {"templateType": "CodeValueFhir", "template": {"typeName": "q", "codes": [{"code": "x"}],
          "value": {"valueName": "hr", "valueType": "Quantity"}}}]}))
    .unwrap();
    let config = MappingConfig {
        identity_mode: IdentityMode::Create,
        ..MappingConfig::default()
    };
    let values = [
        "72",
        "abc",
        "",
        "1e999",
        "-0",
        "NaN",
        "3.14159265358979323846",
        "1e-400",
    ];
    let times = [
        datetime!(2024-01-01 00:00:00 UTC),
        datetime!(-9999-01-01 00:00:00 UTC),
        datetime!(9999-12-31 23:59:59.999 UTC),
    ];
    let mut ms = Vec::new();
    for i in 0..200 {
        ms.push(salus_devices::Measurement {
            type_name: rng.pick(&["hr", "q", "zzz"]).into(),
            occurrence_time: times[rng.below(times.len())],
            device_id: rng.text("ab|%& ", 4),
            patient_id: if i % 3 == 0 {
                None
            } else {
                Some(rng.text("pq", 3))
            },
            encounter_id: None,
            correlation_id: if i % 7 == 0 { Some("c".into()) } else { None },
            properties: [("hr".to_string(), rng.pick(&values).to_string())].into(),
        });
    }
    let p = plan(&fhir, &config, &ms, &NoDevices);
    for o in &p.observations {
        let _ = o.resource(None);
        for _ in 0..5 {
            let junk = rng.value(0);
            let _ = merge(&junk, &o.group);
        }
        let forged = json!({"resourceType": "Observation", "identifier": [{"value": o.identifier.value}],
            "effectivePeriod": {"start": "2024-01-01T00:00:00Z", "end": "9999-12-31T00:00:00Z"},
            "valueSampledData": {"period": 0.5, "data": "1 2 E x"}});
        let _ = merge(&forged, &o.group);
    }
    let rules = RuleSet::from_json_str(r#"{"rules": [
        {"id": "a", "type": "hr", "value": "hr", "threshold": {"op": ">", "value": 1}, "sustainedFor": "1w"},
        {"id": "b", "type": "hr", "value": "hr", "trend": {"change": -1, "within": 1}},
        {"id": "c", "type": "q", "missing": {"after": "1s"}}]}"#)
    .unwrap();
    let mut engine = RuleEngine::new(rules).unwrap();
    for m in &ms {
        let _ = engine.observe(m, times[0]);
        let _ = engine.tick(times[rng.below(times.len())]);
    }
    for _ in 0..2_000 {
        let _ = RuleSet::from_json_str(&rng.value(0).to_string());
        let _ = RuleSet::from_json_str(&rng.text("{}[]\":,rulesidtype0 ", 50));
    }
}
