//! The raw input of a scenario file: TOML tables that keep every key's
//! position, and the error list that turns positions into file, line,
//! column and field. Shared by the parser and by every action family's
//! own parsing (see `actions`).

use super::super::ScenarioError;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

/// A TOML table with the position of each key and value.
pub(crate) type SpannedTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// Where a step's own fields are: its byte range and its path (`step[3]`).
pub(crate) struct Place {
    /// The step's table in the file.
    pub span: Range<usize>,
    /// How errors name it.
    pub path: String,
}

impl Place {
    /// The path of one of its fields (`step[3].mode`).
    pub fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.path)
    }
}

/// A step's own fields (all but the keys every step has), where they are,
/// and where their errors go: what an action family parses.
pub(crate) struct StepInput<'a, 'e, 'x> {
    /// The fields.
    pub own: &'a SpannedTable,
    /// The step's place in the file.
    pub place: &'a Place,
    /// Where errors go.
    pub errors: &'e mut Errors<'x>,
}

impl StepInput<'_, '_, '_> {
    /// The fields as `T`, or an error at the field at fault.
    pub fn typed<T: DeserializeOwned>(&mut self) -> Option<T> {
        typed(self.own, &self.place.span, &self.place.path, self.errors)
    }

    /// Record `message` about the step's field `field`, at that field's
    /// line (the step's, when the field is not written).
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        let (span, field) = if field.is_empty() {
            (self.place.span.clone(), self.place.path.clone())
        } else {
            (
                key_span(self.own, field, &self.place.span),
                self.place.field(field),
            )
        };
        self.errors.at(&span, field, message);
    }
}

/// Collects errors with positions computed from byte offsets.
pub(crate) struct Errors<'a> {
    pub file: &'a str,
    pub text: &'a str,
    pub found: Vec<ScenarioError>,
    /// Byte offset of each line's start, so that a position is found by
    /// binary search: a file of 100 000 steps is read in linear time.
    line_starts: Vec<usize>,
}

impl<'a> Errors<'a> {
    /// No errors yet about `text`, the file `file`.
    pub fn new(file: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Self {
            file,
            text,
            found: Vec::new(),
            line_starts,
        }
    }

    /// Record `message` about `field`, at the byte range `span`.
    pub fn at(
        &mut self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let offset = span.start.min(self.text.len());
        let line = self.line_of(offset);
        let line_start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column = offset.saturating_sub(line_start) + 1;
        self.found.push(ScenarioError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    /// The byte offset where 1-based `line` starts (the text's end past
    /// its last line).
    pub fn line_start(&self, line: usize) -> usize {
        self.line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(self.text.len())
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        // The number of lines that start at or before `offset`.
        self.line_starts
            .partition_point(|&start| start <= offset)
            .max(1)
    }
}

/// The position of `key` in `table`, or `fallback`.
pub(crate) fn key_span(table: &SpannedTable, key: &str, fallback: &Range<usize>) -> Range<usize> {
    table
        .keys()
        .find(|candidate| candidate.get_ref() == key)
        .map_or(fallback.clone(), Spanned::span)
}

/// Deserialize a table into `T`; on failure, record one error at the key
/// the message names (or at the table).
pub(crate) fn typed<T: DeserializeOwned>(
    table: &SpannedTable,
    table_span: &Range<usize>,
    path: &str,
    errors: &mut Errors<'_>,
) -> Option<T> {
    let plain: toml::Table = table
        .iter()
        .map(|(key, value)| (key.get_ref().clone(), value.get_ref().clone()))
        .collect();
    match toml::Value::Table(plain).try_into::<T>() {
        Ok(value) => Some(value),
        Err(error) => {
            let message = error.to_string().replace('\n', " ").trim().to_owned();
            let (span, field) = fault_position(&message, table, table_span);
            let field = match (path.is_empty(), field.is_empty()) {
                (true, _) => field,
                (false, true) => path.to_owned(),
                (false, false) => format!("{path}.{field}"),
            };
            errors.at(&span, field, message);
            None
        }
    }
}

/// Where a deserializer's message points: the key it names in backticks,
/// when the table has it, else the table itself.
fn fault_position(
    message: &str,
    table: &SpannedTable,
    table_span: &Range<usize>,
) -> (Range<usize>, String) {
    let named: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let at_key = named.iter().find_map(|name| {
        let top = name.split('.').next().unwrap_or(name);
        table
            .keys()
            .find(|key| key.get_ref() == top)
            .map(|key| (key.span(), *name))
    });
    match at_key {
        Some((span, name)) => (span, name.to_owned()),
        None => (
            table_span.clone(),
            named
                .first()
                .map_or(String::new(), |name| (*name).to_owned()),
        ),
    }
}
