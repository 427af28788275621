//! Population-health measures: ViewDefinitions (embedded from `measures/*.json`) plus SQL,
//! with results as FHIR R4 `MeasureReport` (summary or subject-list) and cohorts as
//! `Group` resources. Each measure is defined precisely in `docs/analytics.md`; the value
//! sets below are the code lists it names.
//!
//! ```
//! use salus_analytics::{measures::{self, MeasurePeriod, ReportType}, Analytics};
//! use serde_json::json;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let resources = vec![
//!     json!({"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"}),
//!     json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
//!            "class": {"code": "EMER"}, "subject": {"reference": "Patient/p1"},
//!            "period": {"start": "2024-03-01T10:00:00Z"}}),
//! ];
//! let mut sql = Analytics::in_memory();
//! measures::register_in_memory(&mut sql, &resources).unwrap();
//! let period = MeasurePeriod::new("2024-01-01", "2024-12-31").unwrap();
//! let result = measures::evaluate(&sql, "ed-visits-per-1000", &period).await.unwrap();
//! assert_eq!(result.score, Some(1000.0));
//! let report = result.measure_report(ReportType::Summary, None);
//! assert_eq!(report["resourceType"], "MeasureReport");
//! # });
//! ```

use crate::error::{AnalyticsError, Result};
use crate::materialize::{MaterializeStats, Materializer};
use crate::sql::Analytics;
use datafusion::arrow::array::{Array, AsArray};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The measure ViewDefinitions, as shipped (`measures/*.json`).
const VIEW_SOURCES: [(&str, &str); 6] = [
    ("mx_patient", include_str!("../measures/mx_patient.json")),
    (
        "mx_condition",
        include_str!("../measures/mx_condition.json"),
    ),
    (
        "mx_observation",
        include_str!("../measures/mx_observation.json"),
    ),
    (
        "mx_blood_pressure",
        include_str!("../measures/mx_blood_pressure.json"),
    ),
    (
        "mx_encounter",
        include_str!("../measures/mx_encounter.json"),
    ),
    (
        "mx_procedure",
        include_str!("../measures/mx_procedure.json"),
    ),
];

/// The ViewDefinitions the measures read, parsed.
pub fn view_definitions() -> Result<Vec<Value>> {
    VIEW_SOURCES
        .iter()
        .map(|(name, text)| {
            serde_json::from_str(text).map_err(|e| {
                AnalyticsError::Invalid(format!("embedded view {name} is not JSON: {e}"))
            })
        })
        .collect()
}

/// Run every measure view over `resources` and register the rows in memory.
pub fn register_in_memory(analytics: &mut Analytics, resources: &[Value]) -> Result<()> {
    for def in view_definitions()? {
        analytics.register_view(&def, resources)?;
    }
    Ok(())
}

/// Materialize every measure view over `resources` (one pass per view).
pub fn materialize(
    materializer: &Materializer,
    resources: &[Value],
    high_water_mark: Option<&str>,
) -> Result<Vec<MaterializeStats>> {
    view_definitions()?
        .iter()
        .map(|def| materializer.materialize(def, resources, high_water_mark))
        .collect()
}

/// What a measure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Patients (a patient is in a population or not).
    Patient,
    /// Encounters (events; one patient may count several times).
    Encounter,
}

/// How the score is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// numerator / (denominator − denominator-exclusion).
    Proportion,
    /// numerator × 1000 / denominator (events per 1,000 patients).
    RatePer1000,
}

/// One shipped measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// Identifier used by [`evaluate`] and in the canonical URL.
    pub id: &'static str,
    /// Human-readable title.
    pub title: &'static str,
    /// Whether a higher score is better (`increase`) or worse (`decrease`).
    pub improvement: &'static str,
    /// What the numerator counts.
    pub subject: Subject,
    /// How the score is computed.
    pub scoring: Scoring,
}

impl Measure {
    /// Canonical URL of the measure (`urn:salus:measure:<id>`).
    pub fn url(&self) -> String {
        format!("urn:salus:measure:{}", self.id)
    }
}

/// The shipped measures.
pub const MEASURES: [Measure; 5] = [
    Measure {
        id: "diabetes-hba1c-poor-control",
        title: "Diabetes: latest HbA1c > 9.0% (poor control)",
        improvement: "decrease",
        subject: Subject::Patient,
        scoring: Scoring::Proportion,
    },
    Measure {
        id: "hypertension-bp-control",
        title:
            "Hypertension: latest blood pressure < 140/90 mmHg (controlling high blood pressure)",
        improvement: "increase",
        subject: Subject::Patient,
        scoring: Scoring::Proportion,
    },
    Measure {
        id: "readmission-30-day",
        title: "All-cause 30-day inpatient readmission rate",
        improvement: "decrease",
        subject: Subject::Encounter,
        scoring: Scoring::Proportion,
    },
    Measure {
        id: "ed-visits-per-1000",
        title: "Emergency department visits per 1,000 patients",
        improvement: "decrease",
        subject: Subject::Encounter,
        scoring: Scoring::RatePer1000,
    },
    Measure {
        id: "colorectal-screening-overdue",
        title: "Adults 50-75 overdue for colorectal cancer screening",
        improvement: "decrease",
        subject: Subject::Patient,
        scoring: Scoring::Proportion,
    },
];

/// The measure with this id.
pub fn measure(id: &str) -> Result<&'static Measure> {
    MEASURES
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| AnalyticsError::UnknownMeasure(id.to_string()))
}

/// The measurement period: two calendar dates (`YYYY-MM-DD`), both included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurePeriod {
    /// First day.
    pub start: String,
    /// Last day.
    pub end: String,
}

fn parse_date(s: &str) -> Option<(i32, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i32 = s.get(0..4)?.parse().ok()?;
    let m: u32 = s.get(5..7)?.parse().ok()?;
    let d: u32 = s.get(8..10)?.parse().ok()?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (y >= 1 && (1..=days).contains(&d)).then_some((y, m, d))
}

impl MeasurePeriod {
    /// A period from two dates (`YYYY-MM-DD`); `start` must not be after `end`.
    pub fn new(start: &str, end: &str) -> Result<Self> {
        for d in [start, end] {
            if parse_date(d).is_none() {
                return Err(AnalyticsError::Invalid(format!(
                    "measurement period date '{d}' is not a YYYY-MM-DD date"
                )));
            }
        }
        if start > end {
            return Err(AnalyticsError::Invalid(format!(
                "measurement period starts ({start}) after it ends ({end})"
            )));
        }
        Ok(MeasurePeriod {
            start: start.to_string(),
            end: end.to_string(),
        })
    }

    /// A calendar year.
    pub fn year(year: i32) -> Result<Self> {
        Self::new(&format!("{year:04}-01-01"), &format!("{year:04}-12-31"))
    }

    fn end_year(&self) -> i32 {
        parse_date(&self.end).map(|(y, _, _)| y).unwrap_or(0)
    }

    /// `MM-DD` of the end date.
    fn end_month_day(&self) -> &str {
        self.end.get(5..).unwrap_or("")
    }

    /// The date `years` years before the end (29 February becomes 28 February).
    fn end_minus_years(&self, years: i32) -> String {
        let (y, m, d) = parse_date(&self.end).unwrap_or((2000, 1, 1));
        let y = y - years;
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let d = if m == 2 && d == 29 && !leap { 28 } else { d };
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// A FHIR date/dateTime column as a `YYYY-MM-DD` day for comparisons: partial dates
/// count as their first day, times are dropped (the local date as written).
fn day(col: &str) -> String {
    format!(
        "(CASE WHEN length({col}) = 4 THEN {col} || '-01-01' \
         WHEN length({col}) = 7 THEN {col} || '-01' ELSE substr({col}, 1, 10) END)"
    )
}

/// A value set as a SQL predicate over `system`/`code` columns: exact codes, and code
/// prefixes (for ICD-10 categories such as `E11`, which cover `E11.9`).
struct ValueSet {
    exact: &'static [(&'static str, &'static [&'static str])],
    prefix: &'static [(&'static str, &'static [&'static str])],
}

const SNOMED: &str = "http://snomed.info/sct";
const ICD10: &[&str] = &[
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://hl7.org/fhir/sid/icd-10",
];
const LOINC: &str = "http://loinc.org";

impl ValueSet {
    fn sql(&self, system: &str, code: &str) -> String {
        let mut parts = Vec::new();
        for (sys, codes) in self.exact {
            parts.push(format!(
                "({system} = '{sys}' AND {code} IN ({}))",
                quoted(codes)
            ));
        }
        for (sys, prefixes) in self.prefix {
            let likes: Vec<String> = prefixes
                .iter()
                .map(|p| format!("{code} LIKE '{p}%'"))
                .collect();
            parts.push(format!("({system} = '{sys}' AND ({}))", likes.join(" OR ")));
        }
        format!("({})", parts.join(" OR "))
    }
}

fn quoted(codes: &[&str]) -> String {
    codes
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

const DIABETES: ValueSet = ValueSet {
    exact: &[(SNOMED, &["73211009", "44054006", "46635009"])],
    prefix: &[
        (ICD10[0], &["E10", "E11", "E13"]),
        (ICD10[1], &["E10", "E11", "E13"]),
    ],
};
const HYPERTENSION: ValueSet = ValueSet {
    exact: &[(SNOMED, &["38341003", "59621000", "1201005"])],
    prefix: &[(ICD10[0], &["I10"]), (ICD10[1], &["I10"])],
};
const COLORECTAL_CANCER: ValueSet = ValueSet {
    exact: &[(SNOMED, &["363406005", "93761005", "109838007", "363351006"])],
    prefix: &[
        (ICD10[0], &["C18", "C19", "C20"]),
        (ICD10[1], &["C18", "C19", "C20"]),
    ],
};
const TOTAL_COLECTOMY: ValueSet = ValueSet {
    exact: &[(SNOMED, &["26390003"])],
    prefix: &[],
};

/// Colorectal screening tests and how many years back each one counts.
const SCREENINGS: [(&str, &str, &[&str], i32); 5] = [
    ("procedure", SNOMED, &["73761001"], 10), // colonoscopy
    ("procedure", SNOMED, &["44441009"], 5),  // flexible sigmoidoscopy
    ("procedure", SNOMED, &["418714002"], 5), // CT colonography
    ("observation", LOINC, &["77353-1", "77354-9"], 3), // FIT-DNA (stool DNA)
    (
        "observation",
        LOINC,
        &[
            "2335-8", "27396-1", "29771-3", "56490-6", "56491-4", "57905-2", "58453-2", "80372-6",
        ],
        1,
    ), // FOBT / FIT
];

/// Conditions that count: not refuted or entered in error, clinically active (or
/// unstated), started (onset, onset period start or recorded date) by the period end.
fn active_condition(vs: &ValueSet, p: &MeasurePeriod, require_active: bool) -> String {
    let active = if require_active {
        "AND (clinical_status IS NULL OR clinical_status IN ('active', 'recurrence', 'relapse'))"
    } else {
        ""
    };
    format!(
        "SELECT DISTINCT patient_id FROM mx_condition \
         WHERE patient_id IS NOT NULL AND {vs} \
         AND (verification_status IS NULL OR verification_status NOT IN ('refuted', 'entered-in-error')) \
         {active} \
         AND (coalesce(onset, onset_start, recorded_date) IS NULL OR {onset} <= '{end}')",
        vs = vs.sql("system", "code"),
        onset = day("coalesce(onset, onset_start, recorded_date)"),
        end = p.end,
    )
}

/// Patients alive at the period end, active (or unstated), with their age at the end.
fn patients_cte(p: &MeasurePeriod, min_age: i64, max_age: i64) -> String {
    format!(
        "pat AS (SELECT id FROM (SELECT id, \
           {ey} - TRY_CAST(substr(birth_date, 1, 4) AS BIGINT) \
             - CASE WHEN substr(birth_date, 6, 5) > '{md}' THEN 1 ELSE 0 END AS age \
           FROM mx_patient \
           WHERE birth_date IS NOT NULL AND (active IS NULL OR active) \
             AND (deceased IS NULL OR NOT deceased) \
             AND (deceased_date IS NULL OR {dd} > '{end}')) \
         WHERE age BETWEEN {min_age} AND {max_age})",
        ey = p.end_year(),
        md = p.end_month_day(),
        dd = day("deceased_date"),
        end = p.end,
    )
}

const FINAL: &str = "status IN ('final', 'amended', 'corrected')";

/// The SQL of a measure: rows of (population code, subject reference, patient id).
fn measure_sql(m: &Measure, p: &MeasurePeriod) -> String {
    let (start, end) = (&p.start, &p.end);
    match m.id {
        "diabetes-hba1c-poor-control" => format!(
            "WITH {pat}, \
             ip AS (SELECT id FROM pat WHERE id IN ({diab})), \
             a1c AS (SELECT patient_id, val, ROW_NUMBER() OVER \
                 (PARTITION BY patient_id ORDER BY eff DESC, id DESC) AS rn FROM \
               (SELECT DISTINCT id, patient_id, coalesce(effective, effective_start) AS eff, \
                  CASE WHEN coalesce(unit_code, unit) = 'mmol/mol' THEN value * 0.09148 + 2.152 \
                       ELSE value END AS val \
                FROM mx_observation WHERE system = '{LOINC}' AND code = '4548-4' AND {FINAL} \
                  AND value IS NOT NULL AND patient_id IS NOT NULL \
                  AND {eff} BETWEEN '{start}' AND '{end}')), \
             num AS (SELECT ip.id FROM ip JOIN a1c ON a1c.patient_id = ip.id AND a1c.rn = 1 \
                 WHERE a1c.val > 9.0) \
             SELECT 'initial-population' AS population, id AS subject, id AS patient FROM ip \
             UNION ALL SELECT 'denominator', id AS subject, id AS patient FROM ip \
             UNION ALL SELECT 'numerator', id AS subject, id AS patient FROM num",
            pat = patients_cte(p, 18, 75),
            diab = active_condition(&DIABETES, p, true),
            eff = day("coalesce(effective, effective_start)"),
        ),
        "hypertension-bp-control" => format!(
            "WITH {pat}, \
             ip AS (SELECT id FROM pat WHERE id IN ({htn})), \
             bp AS (SELECT patient_id, systolic, diastolic, ROW_NUMBER() OVER \
                 (PARTITION BY patient_id ORDER BY coalesce(effective, effective_start) DESC, id DESC) AS rn \
               FROM mx_blood_pressure WHERE {FINAL} AND patient_id IS NOT NULL \
                 AND systolic IS NOT NULL AND diastolic IS NOT NULL \
                 AND {eff} BETWEEN '{start}' AND '{end}'), \
             num AS (SELECT ip.id FROM ip JOIN bp ON bp.patient_id = ip.id AND bp.rn = 1 \
                 WHERE bp.systolic < 140 AND bp.diastolic < 90) \
             SELECT 'initial-population' AS population, id AS subject, id AS patient FROM ip \
             UNION ALL SELECT 'denominator', id AS subject, id AS patient FROM ip \
             UNION ALL SELECT 'numerator', id AS subject, id AS patient FROM num",
            pat = patients_cte(p, 18, 85),
            htn = active_condition(&HYPERTENSION, p, true),
            eff = day("coalesce(effective, effective_start)"),
        ),
        "readmission-30-day" => format!(
            "WITH inpatient AS (SELECT id, patient_id, status, period_start, period_end, \
                 discharge_disposition FROM mx_encounter \
               WHERE class_code IN ('IMP', 'ACUTE', 'NONAC') AND patient_id IS NOT NULL), \
             ip AS (SELECT * FROM inpatient WHERE status = 'finished' \
               AND period_end IS NOT NULL AND {end_day} BETWEEN '{start}' AND '{end}'), \
             excl AS (SELECT * FROM ip WHERE discharge_disposition = 'exp'), \
             denom AS (SELECT * FROM ip WHERE discharge_disposition IS NULL \
               OR discharge_disposition <> 'exp'), \
             num AS (SELECT DISTINCT d.id, d.patient_id FROM denom d JOIN inpatient r \
               ON r.patient_id = d.patient_id AND r.id <> d.id \
               WHERE coalesce(r.status, '') NOT IN ('cancelled', 'entered-in-error', 'planned') \
                 AND r.period_start IS NOT NULL \
                 AND TRY_CAST({r_start} AS DATE) > TRY_CAST({d_end} AS DATE) \
                 AND TRY_CAST({r_start} AS DATE) <= TRY_CAST({d_end} AS DATE) + INTERVAL '30 days') \
             SELECT 'initial-population' AS population, 'Encounter/' || id AS subject, patient_id AS patient FROM ip \
             UNION ALL SELECT 'denominator', 'Encounter/' || id AS subject, patient_id AS patient FROM ip \
             UNION ALL SELECT 'denominator-exclusion', 'Encounter/' || id AS subject, patient_id AS patient FROM excl \
             UNION ALL SELECT 'numerator', 'Encounter/' || id AS subject, patient_id AS patient FROM num",
            end_day = day("period_end"),
            r_start = day("r.period_start"),
            d_end = day("d.period_end"),
        ),
        "ed-visits-per-1000" => format!(
            "WITH pat AS (SELECT id FROM mx_patient WHERE (active IS NULL OR active) \
               AND (deceased IS NULL OR NOT deceased OR deceased_date IS NOT NULL) \
               AND (deceased_date IS NULL OR {dd} >= '{start}')), \
             ed AS (SELECT e.id, e.patient_id FROM mx_encounter e JOIN pat ON pat.id = e.patient_id \
               WHERE e.class_code = 'EMER' \
                 AND coalesce(e.status, '') NOT IN ('cancelled', 'entered-in-error', 'planned') \
                 AND e.period_start IS NOT NULL AND {start_day} BETWEEN '{start}' AND '{end}') \
             SELECT 'denominator' AS population, 'Patient/' || id AS subject, id AS patient FROM pat \
             UNION ALL SELECT 'numerator', 'Encounter/' || id AS subject, patient_id AS patient FROM ed",
            dd = day("deceased_date"),
            start_day = day("e.period_start"),
        ),
        "colorectal-screening-overdue" => {
            let mut screened = Vec::new();
            for (kind, system, codes, years) in SCREENINGS {
                let from = p.end_minus_years(years);
                let vs = format!("system = '{system}' AND code IN ({})", quoted(codes));
                screened.push(match kind {
                    "procedure" => format!(
                        "SELECT patient_id FROM mx_procedure WHERE {vs} AND status = 'completed' \
                         AND {d} > '{from}' AND {d} <= '{end}'",
                        d = day("coalesce(performed, performed_start)"),
                    ),
                    _ => format!(
                        "SELECT patient_id FROM mx_observation WHERE {vs} AND {FINAL} \
                         AND {d} > '{from}' AND {d} <= '{end}'",
                        d = day("coalesce(effective, effective_start)"),
                    ),
                });
            }
            format!(
                "WITH {pat}, \
                 excl AS (SELECT id FROM pat WHERE id IN ({cancer}) OR id IN \
                   (SELECT patient_id FROM mx_procedure WHERE {colectomy} AND status = 'completed' \
                     AND {perf} <= '{end}')), \
                 screened AS ({screened}), \
                 num AS (SELECT id FROM pat WHERE id NOT IN (SELECT id FROM excl) \
                   AND id NOT IN (SELECT patient_id FROM screened WHERE patient_id IS NOT NULL)) \
                 SELECT 'initial-population' AS population, id AS subject, id AS patient FROM pat \
                 UNION ALL SELECT 'denominator', id AS subject, id AS patient FROM pat \
                 UNION ALL SELECT 'denominator-exclusion', id AS subject, id AS patient FROM excl \
                 UNION ALL SELECT 'numerator', id AS subject, id AS patient FROM num",
                pat = patients_cte(p, 50, 75),
                cancer = active_condition(&COLORECTAL_CANCER, p, false),
                colectomy = TOTAL_COLECTOMY.sql("system", "code"),
                perf = day("coalesce(performed, performed_start)"),
                screened = screened.join(" UNION ALL "),
            )
        }
        _ => String::new(),
    }
}

/// The SQL a measure runs for a period (for inspection and reproduction).
pub fn sql_for(id: &str, period: &MeasurePeriod) -> Result<String> {
    Ok(measure_sql(measure(id)?, period))
}

/// One population of a measure result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Population {
    /// FHIR `measure-population` code (`initial-population`, `denominator`,
    /// `denominator-exclusion`, `numerator`).
    pub code: &'static str,
    /// The members: `Patient/<id>` or `Encounter/<id>` references, sorted.
    pub subjects: Vec<String>,
    /// The distinct patients behind them (ids), sorted.
    pub patients: Vec<String>,
}

impl Population {
    /// Number of members.
    pub fn count(&self) -> u64 {
        self.subjects.len() as u64
    }
}

/// The result of one measure over one period.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureResult {
    /// The measure.
    pub measure: &'static Measure,
    /// The period.
    pub period: MeasurePeriod,
    /// Populations, in the order `initial-population`, `denominator`,
    /// `denominator-exclusion`, `numerator` (those the measure has).
    pub populations: Vec<Population>,
    /// The score (`None` when the denominator is empty).
    pub score: Option<f64>,
}

/// `MeasureReport.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportType {
    /// Counts only.
    Summary,
    /// Counts, and a contained `List` of the members of each population.
    SubjectList,
}

const POPULATION_ORDER: [&str; 4] = [
    "initial-population",
    "denominator",
    "denominator-exclusion",
    "numerator",
];

fn populations_of(m: &Measure) -> &'static [&'static str] {
    match m.id {
        "diabetes-hba1c-poor-control" | "hypertension-bp-control" => {
            &["initial-population", "denominator", "numerator"]
        }
        "ed-visits-per-1000" => &["denominator", "numerator"],
        _ => &POPULATION_ORDER,
    }
}

/// Evaluate measure `id` for `period` over the measure views registered in `analytics`
/// (see [`register_in_memory`] and [`materialize`]).
pub async fn evaluate(
    analytics: &Analytics,
    id: &str,
    period: &MeasurePeriod,
) -> Result<MeasureResult> {
    let m = measure(id)?;
    let batches = analytics.query(&measure_sql(m, period)).await?;
    let mut members: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for code in populations_of(m) {
        members.insert(*code, (Vec::new(), Vec::new()));
    }
    for b in &batches {
        let cast = |i: usize| {
            datafusion::arrow::compute::cast(
                b.column(i),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
        };
        let (pop, subj, pat) = (cast(0)?, cast(1)?, cast(2)?);
        let (pop, subj, pat) = (
            pop.as_string::<i32>(),
            subj.as_string::<i32>(),
            pat.as_string::<i32>(),
        );
        for r in 0..b.num_rows() {
            if pop.is_null(r) || subj.is_null(r) {
                continue;
            }
            let Some(entry) = members.get_mut(pop.value(r)) else {
                continue;
            };
            let s = subj.value(r);
            entry.0.push(if s.contains('/') {
                s.to_string()
            } else {
                format!("Patient/{s}")
            });
            if !pat.is_null(r) {
                entry.1.push(pat.value(r).to_string());
            }
        }
    }
    let mut populations = Vec::new();
    for &code in populations_of(m) {
        let (mut subjects, mut patients) = members.remove(code).unwrap_or_default();
        subjects.sort();
        subjects.dedup();
        patients.sort();
        patients.dedup();
        populations.push(Population {
            code,
            subjects,
            patients,
        });
    }
    let count = |code: &str| {
        populations
            .iter()
            .find(|p| p.code == code)
            .map_or(0, Population::count) as f64
    };
    let score = match m.scoring {
        Scoring::Proportion => {
            let d = count("denominator") - count("denominator-exclusion");
            (d > 0.0).then(|| round6(count("numerator") / d))
        }
        Scoring::RatePer1000 => {
            let d = count("denominator");
            (d > 0.0).then(|| round6(count("numerator") * 1000.0 / d))
        }
    };
    Ok(MeasureResult {
        measure: m,
        period: period.clone(),
        populations,
        score,
    })
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

impl MeasureResult {
    /// The population with this code.
    pub fn population(&self, code: &str) -> Option<&Population> {
        self.populations.iter().find(|p| p.code == code)
    }

    /// The number of members of a population (0 when the measure has no such population).
    pub fn count(&self, code: &str) -> u64 {
        self.population(code).map_or(0, Population::count)
    }

    /// The result as a FHIR R4 `MeasureReport`; `date` is `MeasureReport.date` when given.
    pub fn measure_report(&self, kind: ReportType, date: Option<&str>) -> Value {
        let mut contained = Vec::new();
        let mut pops = Vec::new();
        for p in &self.populations {
            let mut pop = json!({
                "code": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/measure-population",
                    "code": p.code
                }]},
                "count": p.count()
            });
            if kind == ReportType::SubjectList {
                pop["subjectResults"] = json!({"reference": format!("#{}", p.code)});
                contained.push(json!({
                    "resourceType": "List",
                    "id": p.code,
                    "status": "current",
                    "mode": "snapshot",
                    "title": format!("{}: {}", self.measure.id, p.code),
                    "entry": p.subjects.iter()
                        .map(|s| json!({"item": {"reference": s}}))
                        .collect::<Vec<_>>()
                }));
            }
            pops.push(pop);
        }
        let mut group = json!({"population": pops});
        if let Some(s) = self.score {
            group["measureScore"] = match self.measure.scoring {
                Scoring::Proportion => json!({"value": s}),
                Scoring::RatePer1000 => json!({"value": s, "unit": "visits per 1000 patients"}),
            };
        }
        let mut report = serde_json::Map::new();
        report.insert("resourceType".into(), json!("MeasureReport"));
        if !contained.is_empty() {
            report.insert("contained".into(), Value::Array(contained));
        }
        report.insert("status".into(), json!("complete"));
        report.insert(
            "type".into(),
            json!(match kind {
                ReportType::Summary => "summary",
                ReportType::SubjectList => "subject-list",
            }),
        );
        report.insert("measure".into(), json!(self.measure.url()));
        if let Some(d) = date {
            report.insert("date".into(), json!(d));
        }
        report.insert(
            "period".into(),
            json!({"start": self.period.start, "end": self.period.end}),
        );
        report.insert(
            "improvementNotation".into(),
            json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/measure-improvement-notation",
                "code": self.measure.improvement
            }]}),
        );
        report.insert("group".into(), json!([group]));
        Value::Object(report)
    }

    /// The patients of a population as a FHIR `Group` (a cohort), or `None` when the
    /// measure has no such population.
    pub fn group(&self, code: &str) -> Option<Value> {
        let p = self.population(code)?;
        Some(json!({
            "resourceType": "Group",
            "id": format!("{}-{}", self.measure.id, p.code).chars().take(64).collect::<String>(),
            "type": "person",
            "actual": true,
            "name": format!("{} — {} ({} to {})", self.measure.title, p.code, self.period.start, self.period.end),
            "quantity": p.patients.len(),
            "member": p.patients.iter()
                .map(|id| json!({"entity": {"reference": format!("Patient/{id}")}}))
                .collect::<Vec<_>>()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_checked() {
        assert!(MeasurePeriod::new("2024-01-01", "2024-12-31").is_ok());
        assert!(MeasurePeriod::new("2024-12-31", "2024-01-01").is_err());
        assert!(MeasurePeriod::new("2024-02-30", "2024-12-31").is_err());
        assert!(MeasurePeriod::new("2024", "2024-12-31").is_err());
        let p = MeasurePeriod::new("2023-03-01", "2024-02-29").unwrap();
        assert_eq!(p.end_minus_years(10), "2014-02-28");
        assert_eq!(p.end_minus_years(4), "2020-02-29");
        assert_eq!(p.end_month_day(), "02-29");
    }

    #[test]
    fn embedded_views_compile() {
        let defs = view_definitions().unwrap();
        assert_eq!(defs.len(), VIEW_SOURCES.len());
        for d in defs {
            crate::materialize::compile_named(&d).unwrap();
        }
    }

    #[test]
    fn value_sets_become_predicates() {
        let s = HYPERTENSION.sql("system", "code");
        assert!(
            s.contains("code IN ('38341003', '59621000', '1201005')"),
            "{s}"
        );
        assert!(s.contains("code LIKE 'I10%'"), "{s}");
        assert!(measure("nope").is_err());
        for m in MEASURES {
            assert!(!measure_sql(&m, &MeasurePeriod::year(2024).unwrap()).is_empty());
        }
    }
}
