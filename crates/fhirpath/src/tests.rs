//! Unit tests of the evaluator by operator and function family, and of the tricky corners:
//! decimal precision, partial dates, quantity units, three-valued logic, empty propagation,
//! primitive extensions, references, the environment hooks, and robustness.

use crate::{parse, DateTime, Env, EvalError, Expr, Item};
use serde_json::{json, Value as Json};
use std::sync::{Arc, Mutex};

fn patient() -> Json {
    // Parsed from text (not `json!`) so decimals keep their written digits.
    serde_json::from_str(
        r##"{
        "resourceType": "Patient",
        "id": "p1",
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "Acme"}],
        "managingOrganization": {"reference": "#org1"},
        "generalPractitioner": [{"reference": "Practitioner/pr1"}],
        "active": true,
        "name": [
            {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
            {"use": "usual", "given": ["Jim"], "_given": [{"extension": [{"url": "http://x/nick", "valueBoolean": true}]}]}
        ],
        "telecom": [{"system": "phone", "value": "555"}],
        "birthDate": "1974-12-25",
        "_birthDate": {"id": "bd", "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "deceasedBoolean": false,
        "multipleBirthInteger": 2,
        "extension": [{"url": "http://x/weight", "valueQuantity": {"value": 70.50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}]
    }"##,
    )
    .unwrap_or_default()
}

/// Evaluate on the patient and render each item.
fn ev(expr: &str) -> Vec<String> {
    ev_on(expr, &patient())
}

fn ev_on(expr: &str, resource: &Json) -> Vec<String> {
    let e = parse(expr).unwrap_or_else(|err| panic!("{expr}: {err}"));
    e.evaluate(resource, Env::empty())
        .unwrap_or_else(|err| panic!("{expr}: {err}"))
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn one(expr: &str) -> String {
    let r = ev(expr);
    assert_eq!(r.len(), 1, "{expr} gave {r:?}");
    r.into_iter().next().unwrap_or_default()
}

fn is_empty(expr: &str) -> bool {
    ev(expr).is_empty()
}

fn err(expr: &str) -> EvalError {
    parse(expr)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
        .evaluate(&patient(), Env::empty())
        .err()
        .unwrap_or_else(|| panic!("{expr} should fail"))
}

#[test]
fn expr_and_env_are_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Expr>();
    check::<Env<'static>>();
    check::<Item<'static>>();
}

#[test]
fn navigation_and_types() {
    assert_eq!(ev("Patient.name.given"), ["Peter", "James", "Jim"]);
    assert_eq!(ev("name.where(use = 'official').family"), ["Chalmers"]);
    assert!(is_empty("Encounter.status"));
    assert_eq!(one("deceased"), "false");
    assert_eq!(one("deceased is boolean"), "true");
    assert_eq!(one("deceased.type().name"), "boolean");
    assert_eq!(one("multipleBirth.type().namespace"), "FHIR");
    assert_eq!(one("Patient.extension.value.unit"), "kg");
    assert_eq!(one("Patient.extension.value is Quantity"), "true");
    assert_eq!(one("(Patient.extension.value as Quantity).value"), "70.50");
    assert_eq!(one("Patient.extension.value.ofType(Quantity).code"), "kg");
    assert_eq!(one("Patient.birthDate is date"), "true");
    assert_eq!(one("Patient.birthDate is System.Date"), "false");
    assert_eq!(one("Patient.birthDate.is(FHIR.date)"), "true");
    assert_eq!(one("Patient is DomainResource"), "true");
    assert_eq!(one("Patient.name.first() is HumanName"), "true");
    assert_eq!(one("1 is Integer"), "true");
    assert_eq!(one("1.0 is Decimal"), "true");
    assert_eq!(one("'a'.type().namespace"), "System");
    assert_eq!(ev("Patient.name[1].given"), ["Jim"]);
    assert!(is_empty("Patient.name[5]"));
    assert_eq!(one("contained.name"), "Acme");
    assert_eq!(one("contained.is(Organization)"), "true");
    assert_eq!(one("children().count() > 5"), "true");
    assert_eq!(one("descendants().where($this is Extension).count()"), "3");
}

#[test]
fn primitive_extensions_are_reachable() {
    assert_eq!(one("Patient.birthDate.id"), "bd");
    assert_eq!(
        one("Patient.birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime').value"),
        "1974-12-25T14:35:45-05:00"
    );
    assert_eq!(one("Patient.birthDate.extension.value is dateTime"), "true");
    assert_eq!(one("Patient.name.given.extension.count()"), "1");
    assert_eq!(
        one("Patient.name.given.where(extension('http://x/nick').exists())"),
        "Jim"
    );
    assert_eq!(one("Patient.birthDate.hasValue()"), "true");
    assert_eq!(one("Patient.birthDate.getValue() is System.Date"), "true");
    // A primitive with only an extension has no value.
    let r = json!({"resourceType": "Patient", "_gender": {"extension": [{"url": "u", "valueCode": "x"}]}});
    assert_eq!(ev_on("gender.exists()", &r), ["true"]);
    assert_eq!(ev_on("gender.hasValue()", &r), ["false"]);
    assert_eq!(ev_on("gender.extension.url", &r), ["u"]);
}

#[test]
fn three_valued_logic() {
    let table = [
        ("true and {}", None),
        ("false and {}", Some(false)),
        ("{} and false", Some(false)),
        ("true or {}", Some(true)),
        ("false or {}", None),
        ("{} or true", Some(true)),
        ("true xor {}", None),
        ("true xor false", Some(true)),
        ("false implies {}", Some(true)),
        ("{} implies true", Some(true)),
        ("{} implies false", None),
        ("true implies false", Some(false)),
    ];
    for (expr, want) in table {
        let got = ev(expr);
        assert_eq!(
            got,
            want.map(|b| b.to_string()).into_iter().collect::<Vec<_>>(),
            "{expr}"
        );
    }
    assert_eq!(one("(0).not()"), "true");
    assert!(is_empty("(true and 'foo')"));
    assert!(matches!(
        err("(1 | 2).not()"),
        EvalError::NotSingleton { .. }
    ));
    assert!(matches!(
        err("(true | false) and true"),
        EvalError::NotSingleton { .. }
    ));
}

#[test]
fn empty_propagation() {
    for expr in [
        "{} + 1",
        "1 - {}",
        "{} * 2",
        "{} = 1",
        "1 != {}",
        "{} < 1",
        "{}.substring(1)",
        "{}.length()",
        "{}.toInteger()",
        "Patient.foo.upper()",
        "-{}",
        "{} is Integer",
        "1 / 0",
        "5 div 0",
        "5 mod 0",
    ] {
        assert!(is_empty(expr), "{expr}");
    }
    assert_eq!(one("{} ~ {}"), "true");
    assert_eq!(one("{}.empty()"), "true");
    assert_eq!(one("{}.count()"), "0");
    assert_eq!(one("{} & 'a'"), "a");
    assert_eq!(one("1 in {}"), "false");
}

#[test]
fn decimals_keep_precision() {
    assert_eq!(one("1.50"), "1.50");
    assert_eq!(one("1.50 + 1"), "2.50");
    assert_eq!(one("1.0 * 1.5"), "1.50");
    assert_eq!(one("1.10 = 1.1"), "true");
    assert_eq!(one("1.10 ~ 1.1"), "true");
    assert_eq!(one("1.2 / 1.8"), "0.66666667");
    assert_eq!(one("1 / 4"), "0.25");
    assert_eq!(one("7 div 2"), "3");
    assert_eq!(one("-7 mod 2"), "-1");
    assert_eq!(one("2.2 mod 1.8"), "0.4");
    assert_eq!(one("'1.500'.toDecimal()"), "1.500");
    assert_eq!(one("Patient.extension.value.value * 2"), "141.00");
    assert_eq!(one("(2.5).power(2)"), "6.25");
    assert_eq!(one("2.power(10)"), "1024");
    assert_eq!(one("3.14159.round(3)"), "3.142");
    assert_eq!(one("(-2.5).round()"), "-3");
    assert_eq!(one("16.log(2)"), "4");
    assert_eq!(one("81.sqrt()"), "9");
    assert!(is_empty("(-1).sqrt()"));
    assert_eq!(one("9223372036854775807 + 0"), "9223372036854775807");
    assert!(is_empty("9223372036854775807 + 1"));
    assert_eq!(one("(1.5).floor()"), "1");
    assert_eq!(one("(-1.5).ceiling()"), "-1");
}

#[test]
fn partial_dates() {
    assert!(is_empty("@2018-03 < @2018-03-01"));
    assert_eq!(one("@2012-01 < @2012-02-15"), "true");
    assert!(is_empty("@2012-04-15 = @2012-04-15T10:00:00"));
    assert_eq!(one("@2012-04-15 ~ @2012-04-15T10:00:00"), "false");
    assert_eq!(one("Patient.birthDate = @1974-12-25"), "true");
    assert_eq!(one("Patient.birthDate < @1975"), "true");
    assert!(is_empty("Patient.birthDate < @1974"));
    assert_eq!(one("@2014 + 24 months"), "2016");
    assert_eq!(one("@2019-01-31 + 1 month"), "2019-02-28");
    assert_eq!(one("@2019-03-01 - 1 day"), "2019-02-28");
    assert_eq!(
        one("@2019-03-01T10:00:00Z + 90 minutes"),
        "2019-03-01T11:30:00Z"
    );
    assert_eq!(one("@2019-03-01T10:00:00Z + 2 'h'"), "2019-03-01T12:00:00Z");
    assert_eq!(one("@T23:00 + 2 hours"), "01:00");
    assert_eq!(one("Patient.birthDate + 1 year"), "1975-12-25");
    assert_eq!(one("(Patient.birthDate + 1 year) is Date"), "true");
    assert_eq!(one("'2015-02'.toDate()"), "2015-02");
    assert_eq!(one("@2015-02-04.toDateTime() is DateTime"), "true");
    assert_eq!(one("'14:30'.toTime()"), "14:30");
    assert!(matches!(err("@2015 + 1 'mg'"), EvalError::Type(_)));
    let env = Env::new().with_now(DateTime::parse_datetime("2020-06-01T08:30:00.000Z").unwrap());
    let r = parse("today().toString() & ' ' & now().toString() & ' ' & timeOfDay().toString()")
        .unwrap()
        .evaluate(&Json::Null, &env)
        .unwrap();
    assert_eq!(
        r[0].as_str(),
        Some("2020-06-01 2020-06-01T08:30:00.000Z 08:30:00.000")
    );
}

#[test]
fn quantities() {
    assert_eq!(one("4.0000 'g' = 4000.0 'mg'"), "true");
    assert_eq!(one("4 'g' ~ 4040 'mg'"), "true");
    assert_eq!(one("1 'kg' > 1 '[lb_av]'"), "true");
    assert!(is_empty("1 'kg' = 1 'm'"));
    assert!(is_empty("1 year = 1 'a'"));
    assert_eq!(one("7 days = 1 week"), "true");
    assert_eq!(one("1 'g' + 500 'mg'"), "1.500 'g'");
    assert_eq!(one("2 'cm' * 3 'm'"), "6 'cm.m'");
    assert_eq!(one("(2.0 'cm' * 2.0 'm') = 0.040 'm2'"), "true");
    assert_eq!(one("6 'mg' / 2"), "3 'mg'");
    assert_eq!(one("(-5.5 'mg').abs()"), "5.5 'mg'");
    assert_eq!(one("'5 \\'mg\\''.toQuantity('g')"), "0.005 'g'");
    assert_eq!(one("Patient.extension.value > 70 'kg'"), "true");
    assert_eq!(one("Patient.extension.value.comparable(1 'g')"), "true");
    assert_eq!(one("1 'wk'.toString()"), "1 'wk'");
}

#[test]
fn equality_and_collections() {
    assert_eq!(one("'a' = 'a'"), "true");
    assert_eq!(one("'a' ~ ' A '"), "true");
    assert_eq!(one("1 = 1.0"), "true");
    assert_eq!(one("1 = '1'"), "false");
    assert_eq!(one("name = name"), "true");
    assert!(is_empty("(1 | 2) = (1 | 2 | 3)"));
    assert_eq!(one("(1 | 2) ~ (2 | 1)"), "true");
    assert_eq!(one("(1 | 2 | 2).count()"), "2");
    assert_eq!(one("(1 | 2).combine(2).count()"), "3");
    assert_eq!(ev("(1 | 2 | 3).intersect(2 | 3 | 4)"), ["2", "3"]);
    assert_eq!(ev("(1 | 2 | 3).exclude(2)"), ["1", "3"]);
    assert_eq!(one("2 in (1 | 2)"), "true");
    assert_eq!(one("(1 | 2) contains 3"), "false");
    assert_eq!(ev("(3 | 1 | 2).skip(1).take(1)"), ["1"]);
    assert_eq!(one("(1 | 2 | 3).tail().first()"), "2");
    assert_eq!(one("(1|2|3).aggregate($this + $total, 0)"), "6");
    assert_eq!(one("(1|2|3).select($this * $index).last()"), "6");
    assert_eq!(one("(1 | 2).subsetOf(1 | 2 | 3)"), "true");
    assert_eq!(one("(1 | 2).isDistinct()"), "true");
    assert!(matches!(
        err("(1 | 2).single()"),
        EvalError::NotSingleton { .. }
    ));
    assert_eq!(one("Patient.name.all(given.exists())"), "true");
    assert_eq!(one("Patient.name.exists(use = 'usual')"), "true");
    assert_eq!(one("Patient.name.select(given).allTrue()"), "false");
    assert_eq!(one("(true | false).anyTrue()"), "true");
    assert_eq!(ev("iif(Patient.active, 'yes', 'no')"), ["yes"]);
    assert_eq!(ev("iif(false, 1/0)"), Vec::<String>::new());
}

#[test]
fn strings() {
    assert_eq!(one("'abcdef'.substring(2, 3)"), "cde");
    assert_eq!(one("'abc'.indexOf('c')"), "2");
    assert_eq!(one("'abc'.indexOf('x')"), "-1");
    assert_eq!(one("'héllo'.length()"), "5");
    assert_eq!(one("'héllo'.substring(1, 2)"), "él");
    assert_eq!(one("'abc'.replace('', 'x')"), "xaxbxcx");
    assert_eq!(one("'a.b.c'.split('.').count()"), "3");
    assert_eq!(one("('a' | 'b').join('-')"), "a-b");
    assert_eq!(one("'2019-01-01'.matches('^\\\\d{4}-\\\\d{2}')"), "true");
    assert_eq!(one("'a1b22'.replaceMatches('[0-9]+', '#')"), "a#b#");
    assert_eq!(one("'x'.matches('.')"), "true");
    assert_eq!(one("'  pad '.trim()"), "pad");
    assert_eq!(one("'AbC'.lower() + 'x'.upper()"), "abcX");
    assert_eq!(one("'test'.encode('base64')"), "dGVzdA==");
    assert_eq!(one("'74657374'.decode('hex')"), "test");
    assert_eq!(one("'<a>'.escape('html')"), "&lt;a&gt;");
    assert_eq!(one("Patient.birthDate.startsWith('1974')"), "true");
    assert_eq!(one("'P\\u0065ter'"), "Peter");
    assert!(matches!(err("1.length()"), EvalError::Type(_)));
    assert!(matches!(err("'a'.matches('(' + '')"), EvalError::Regex(_)));
}

#[test]
fn conversions() {
    assert_eq!(one("'true'.toBoolean()"), "true");
    assert_eq!(one("'Y'.toBoolean()"), "true");
    assert!(is_empty("2.toBoolean()"));
    assert_eq!(one("'12'.toInteger() + 1"), "13");
    assert!(is_empty("'1.5'.toInteger()"));
    assert_eq!(one("true.toDecimal()"), "1.0");
    assert_eq!(one("@2014-12-14.toString()"), "2014-12-14");
    assert_eq!(one("'1 day'.toQuantity()"), "1 'day'");
    assert_eq!(one("'1 wk'.convertsToQuantity()"), "false");
    assert_eq!(one("'abc'.convertsToDate()"), "false");
}

#[test]
fn operator_errors() {
    for expr in [
        "1 + 'a'",
        "'a' - 'b'",
        "1 < 'a'",
        "@2015 < 1",
        "-true",
        "'a' & 1",
    ] {
        assert!(matches!(err(expr), EvalError::Type(_)), "{expr}");
    }
    assert!(matches!(err("(1|2) + 1"), EvalError::NotSingleton { .. }));
    assert!(matches!(err("foo()"), EvalError::UnknownFunction(_)));
    assert!(matches!(err("%nope"), EvalError::UnknownVariable(_)));
    assert!(parse("first(1)").is_err());
    assert!(parse("where()").is_err());
    assert!(parse("Patient.name.").is_err());
}

#[test]
fn variables() {
    assert_eq!(one("%resource.id"), "p1");
    assert_eq!(one("%context.id = %rootResource.id"), "true");
    assert_eq!(one("%ucum"), "http://unitsofmeasure.org");
    assert_eq!(
        one("%`vs-administrative-gender`"),
        "http://hl7.org/fhir/ValueSet/administrative-gender"
    );
    assert_eq!(
        one("%`ext-patient-birthTime`"),
        "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
    );
    let extra = json!({"limit": 3});
    let env = Env::new()
        .with_string_var("who", "Jim")
        .with_json_var("cfg", &extra);
    let p = patient();
    let r = parse("name.where(given = %who).use | %cfg.limit")
        .unwrap()
        .evaluate(&p, &env)
        .unwrap();
    let r: Vec<String> = r.iter().map(ToString::to_string).collect();
    assert_eq!(r, ["usual", "3"]);
}

#[test]
fn custom_functions_and_hooks() {
    let traced = Arc::new(Mutex::new(Vec::new()));
    let sink = traced.clone();
    let env = Env::new()
        .with_function("shout", |input, args| {
            let suffix = args
                .first()
                .and_then(|a| a.first())
                .and_then(|i| i.as_str().map(str::to_string))
                .unwrap_or_default();
            Ok(input
                .iter()
                .filter_map(|i| i.as_str())
                .map(|s| Item::string(format!("{}{suffix}", s.to_uppercase())))
                .collect())
        })
        .with_trace(move |name, items| {
            if let Ok(mut t) = sink.lock() {
                t.push(format!("{name}:{}", items.len()));
            }
        })
        .with_resolver(|r| {
            (r == "Practitioner/pr1").then(|| {
                Arc::new(json!({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Who"}]}))
            })
        })
        .with_member_of(|item, vs| Ok(Some(vs == "http://vs" && item.as_str() == Some("male"))));
    let p = patient();
    let run = |e: &str| -> Vec<String> {
        parse(e)
            .unwrap()
            .evaluate(&p, &env)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(run("name.family.shout('!')"), ["CHALMERS!"]);
    assert_eq!(run("name.given.trace('g').count()"), ["3"]);
    assert_eq!(
        traced.lock().map(|t| t.clone()).unwrap_or_default(),
        ["g:3"]
    );
    assert_eq!(run("generalPractitioner.resolve().name.family"), ["Who"]);
    assert_eq!(run("'male'.memberOf('http://vs')"), ["true"]);
}

#[test]
fn references_resolve() {
    assert_eq!(one("managingOrganization.resolve().name"), "Acme");
    // Without a resolver, a literal reference resolves to a typed stub.
    assert_eq!(one("generalPractitioner.resolve() is Practitioner"), "true");
    assert_eq!(
        ev("generalPractitioner.where(resolve() is Patient)"),
        Vec::<String>::new()
    );
    let no_stub = Env::new().stub_references(false);
    let p = patient();
    let r = parse("generalPractitioner.resolve()")
        .unwrap()
        .evaluate(&p, &no_stub)
        .unwrap();
    assert!(r.is_empty());
    let bundle = json!({
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "a", "gender": "female"}},
            {"fullUrl": "http://s/Observation/o", "resource": {"resourceType": "Observation", "id": "o", "subject": {"reference": "urn:uuid:1"}}},
            {"resource": {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/a"}}}
        ]
    });
    assert_eq!(
        ev_on(
            "entry.resource.ofType(Observation).subject.resolve().gender",
            &bundle
        ),
        ["female", "female"]
    );
    // memberOf without a hook uses the required R4 value sets.
    assert_eq!(
        ev_on(
            "entry.resource.ofType(Patient).gender.memberOf('http://hl7.org/fhir/ValueSet/administrative-gender')",
            &bundle
        ),
        ["true"]
    );
}

#[test]
fn strict_mode_reports_unknown_elements() {
    let env = Env::new().strict(true);
    let p = patient();
    let run = |e: &str| parse(e).unwrap().evaluate(&p, &env);
    assert!(matches!(
        run("name.given1"),
        Err(EvalError::UnknownElement { .. })
    ));
    assert!(matches!(
        run("Encounter.status"),
        Err(EvalError::UnknownElement { .. })
    ));
    assert!(run("name.given").is_ok());
    assert!(run("(Patient.extension.value as Period).start").is_ok());
    assert!(matches!(
        run("(Patient.extension.value as Period).unit"),
        Err(EvalError::UnknownElement { .. })
    ));
    assert!(matches!(
        run("Patient.children().first()"),
        Err(EvalError::Argument(_))
    ));
    assert!(run("Patient.name.first().given").is_ok());
    // The static check alone, for validating expressions at load time.
    let e =
        parse("Observation.value.unit | Observation.code.coding.where(system = %s).code").unwrap();
    assert!(e.check("Observation").is_ok());
    assert!(parse("Observation.valueQuantity.unit")
        .unwrap()
        .check("Observation")
        .is_err());
    assert!(parse("Observation.value.as(Period).unit")
        .unwrap()
        .check("Observation")
        .is_err());
    // Lenient mode reads typed JSON keys of choice elements too.
    assert_eq!(ev("Patient.deceasedBoolean"), ["false"]);
}

#[test]
fn root_types_and_focus() {
    let name = json!({"family": "X", "given": ["A", "B"]});
    let env = Env::new().with_root_type("HumanName");
    let r = parse("given.count() = 2 and $this is HumanName")
        .unwrap()
        .evaluate(&name, &env)
        .unwrap();
    assert_eq!(r[0].as_bool(), Some(true));
    let p = patient();
    let names = parse("name").unwrap().evaluate(&p, Env::empty()).unwrap();
    let given = parse("given.first()").unwrap();
    let firsts: Vec<String> = names
        .iter()
        .flat_map(|n| {
            given
                .evaluate_on(std::slice::from_ref(n), Some(&p), Env::empty())
                .unwrap()
        })
        .map(|i| i.to_string())
        .collect();
    assert_eq!(firsts, ["Peter", "Jim"]);
    assert_eq!(
        parse("active")
            .unwrap()
            .evaluate_bool(&p, Env::empty())
            .unwrap(),
        Some(true)
    );
}

#[test]
fn items_expose_json_and_types() {
    let p = patient();
    let r = parse("Patient.extension.value")
        .unwrap()
        .evaluate(&p, Env::empty())
        .unwrap();
    assert_eq!(r[0].fhir_type(), Some("Quantity"));
    assert_eq!(
        r[0].as_json().and_then(|j| j.get("unit")),
        Some(&json!("kg"))
    );
    assert_eq!(
        r[0].as_quantity().map(|q| q.value.to_string()),
        Some("70.50".into())
    );
    let r = parse("1.50 | @2015-02 | 2 'mg'")
        .unwrap()
        .evaluate(&p, Env::empty())
        .unwrap();
    assert_eq!(r[0].to_json().to_string(), "1.50");
    assert_eq!(r[1].to_json(), json!("2015-02"));
    assert_eq!(r[2].to_json()["code"], json!("mg"));
    assert_eq!(r[0].type_name().1, "Decimal");
}

/// A deterministic pseudo-random generator for the robustness test.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

#[test]
fn random_inputs_never_panic() {
    let pieces = [
        "Patient",
        "name",
        "given",
        ".",
        "(",
        ")",
        "[",
        "]",
        "0",
        "1.5",
        "'a'",
        "@2015",
        "@T10",
        "+",
        "-",
        "*",
        "/",
        "div",
        "mod",
        "|",
        "&",
        "=",
        "!=",
        "~",
        "<",
        ">=",
        "and",
        "or",
        "implies",
        "is",
        "as",
        "Integer",
        "where",
        "select",
        "repeat",
        "(",
        "$this",
        "$index",
        "$total",
        "%resource",
        "{",
        "}",
        ",",
        "first()",
        "exists(",
        "iif(",
        "'",
        "`",
        "aggregate(",
        "descendants()",
        "children()",
        "ofType(",
        "resolve()",
        "extension(",
        "3 days",
        "'mg'",
        "\\u",
        "@",
        "%",
        "$",
        "\"",
        "é",
        "contains",
        "in",
        "substring(",
        "toString()",
    ];
    let p = patient();
    let mut rng = Lcg(42);
    for _ in 0..5_000 {
        let n = 1 + rng.next() % 12;
        let src: Vec<&str> = (0..n).map(|_| pieces[rng.next() % pieces.len()]).collect();
        let src = src.join(if rng.next() % 2 == 0 { "" } else { " " });
        if let Ok(e) = parse(&src) {
            let _ = e.evaluate(&p, Env::empty());
        }
    }
    // Raw bytes as well.
    for _ in 0..2_000 {
        let bytes: Vec<u8> = (0..(rng.next() % 20))
            .map(|_| (rng.next() % 128) as u8)
            .collect();
        let src = String::from_utf8_lossy(&bytes);
        if let Ok(e) = parse(&src) {
            let _ = e.evaluate(&p, Env::empty());
        }
    }
}

#[test]
fn large_collections_stay_fast() {
    let big: Vec<Json> = (0..20_000).map(|i| json!({"value": i % 5_000})).collect();
    // Untyped JSON (no resourceType): plain key navigation.
    let res = json!({"items": big});
    let start = std::time::Instant::now();
    assert_eq!(ev_on("items.value.distinct().count()", &res), ["5000"]);
    assert_eq!(ev_on("(items | items).count()", &res), ["5000"]);
    assert_eq!(ev_on("items.value.isDistinct()", &res), ["false"]);
    assert_eq!(
        ev_on("items.value.intersect(items.value.take(10)).count()", &res),
        ["10"]
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn runaway_repeat_is_bounded() {
    assert!(matches!(err("1.repeat($this + 1)"), EvalError::Argument(_)));
}

#[test]
fn deepest_accepted_nesting_fits_a_small_stack() {
    // Test threads get 2 MiB; the nesting limit must keep parsing and evaluation (in debug
    // builds too) within it.
    let shapes: Vec<fn(usize) -> String> = vec![
        |n| "(".repeat(n) + "1" + &")".repeat(n),
        |n| vec!["1"; n].join(" + "),
        |n| "-".repeat(n) + "1",
        |n| vec!["name"; n].join("."),
        |n| "1".to_string() + &".abs()".repeat(n),
        |n| "where(".repeat(n) + "true" + &")".repeat(n),
        |n| "iif(true, ".repeat(n) + "1" + &")".repeat(n),
    ];
    for shape in shapes {
        for n in [100usize, 120, 128, 129, 1_000] {
            let src = shape(n);
            let handle = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let p = patient();
                    parse(&src).map(|e| e.evaluate(&p, Env::empty()).is_ok())
                })
                .unwrap_or_else(|e| panic!("spawn: {e}"));
            let parsed = handle.join().is_ok_and(|r| r.is_ok());
            if n <= 100 {
                assert!(parsed, "nesting {n} should be accepted");
            }
            if n > 128 {
                assert!(!parsed, "nesting {n} should be rejected");
            }
        }
    }
}

#[test]
fn low_and_high_boundaries() {
    assert_eq!(one("1.587.lowBoundary()"), "1.58650000");
    assert_eq!(one("1.587.highBoundary(2)"), "1.59");
    assert_eq!(one("1.lowBoundary(1)"), "0.5");
    assert_eq!(one("@1970-06.lowBoundary()"), "1970-06-01");
    assert_eq!(one("@1970-06.highBoundary()"), "1970-06-30");
    assert_eq!(
        one("@2010-10-10T.lowBoundary()"),
        "2010-10-10T00:00:00.000+14:00"
    );
    assert_eq!(one("@T12:34.highBoundary()"), "12:34:59.999");
    assert_eq!(one("(1.5 'mg').lowBoundary(2)"), "1.45 'mg'");
    assert!(is_empty("'abc'.lowBoundary()"));
    assert!(is_empty("{}.highBoundary()"));
    assert!(is_empty("1.5.lowBoundary(50)"));
    // A FHIR `date` node keeps its partial precision.
    let patient = serde_json::json!({"resourceType": "Patient", "birthDate": "1970-06"});
    assert_eq!(ev_on("birthDate.highBoundary()", &patient), ["1970-06-30"]);
}
