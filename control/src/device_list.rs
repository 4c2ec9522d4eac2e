//! Device lists as users give them: the CSV reader behind device import, distribution tasks and
//! transfer orders, and the check that a list names each device once.
//!
//! Every device CSV has a header row and one device per row, cells trimmed, at most
//! [`MAX_CSV_ROWS`] rows. An import names its columns (`deviceName`, optionally `deviceSecret`);
//! a task's or order's list is exactly `productKey,deviceName`, one product throughout. Errors
//! name the CSV line (the header is line 1).
//!
//! What it does not do: strip a byte-order mark (the admin API does, on the way in).

use std::collections::HashSet;
use std::fmt::Display;

use meridian_registry::ids::{DeviceName, ProductKey};

use crate::error::ControlError;
use crate::plane::{MAX_CSV_ROWS, Result};

/// A device CSV whose header has been read.
pub(crate) struct DeviceCsv<'a> {
    reader: csv::Reader<&'a [u8]>,
    header: csv::StringRecord,
}

/// One data row, with its line for messages.
pub(crate) struct Row {
    line: usize,
    record: csv::StringRecord,
}

impl<'a> DeviceCsv<'a> {
    /// Reads the header row of `text`.
    pub(crate) fn open(text: &'a str) -> Result<DeviceCsv<'a>> {
        let mut reader =
            csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
        let header = reader
            .headers()
            .map_err(|e| ControlError::Invalid(format!("CSV header: {e}")))?
            .clone();
        Ok(DeviceCsv { reader, header })
    }

    /// Reads the header row of a task's or order's device list, which must be exactly
    /// `productKey,deviceName`.
    pub(crate) fn open_list(text: &'a str) -> Result<DeviceCsv<'a>> {
        let csv = DeviceCsv::open(text)?;
        if csv.header.iter().ne(["productKey", "deviceName"]) {
            return Err(ControlError::Invalid("CSV header must be productKey,deviceName".into()));
        }
        Ok(csv)
    }

    /// The position of the column named `name`.
    pub(crate) fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// The data rows in order; a malformed row, or one past [`MAX_CSV_ROWS`], is an error.
    pub(crate) fn rows(self) -> impl Iterator<Item = Result<Row>> + 'a {
        self.reader.into_records().enumerate().map(|(index, record)| {
            let line = index + 2;
            let record =
                record.map_err(|e| ControlError::Invalid(format!("CSV row {line}: {e}")))?;
            if index == MAX_CSV_ROWS {
                return Err(ControlError::Invalid(format!(
                    "CSV holds more than {MAX_CSV_ROWS} rows"
                )));
            }
            Ok(Row { line, record })
        })
    }
}

impl Row {
    /// The cell in `column`, empty if the row is shorter.
    pub(crate) fn get(&self, column: usize) -> &str {
        self.record.get(column).unwrap_or_default()
    }

    /// The device name of a device-list row, which must name `product`: one product per
    /// `order` (`"task"`, `"transfer"`). The name is checked by [`unique_names`].
    pub(crate) fn device_name_of(&self, product: &ProductKey, order: &str) -> Result<String> {
        if self.get(0) != product.as_str() {
            return Err(
                self.invalid(format!("productKey must be {product} (one product per {order})"))
            );
        }
        Ok(self.get(1).to_owned())
    }

    /// An error about this row.
    pub(crate) fn invalid(&self, reason: impl Display) -> ControlError {
        ControlError::Invalid(format!("CSV row {}: {reason}", self.line))
    }
}

/// Parses listed device names (typed or read from a CSV), each of which may appear once.
pub(crate) fn unique_names(names: Vec<String>) -> Result<Vec<DeviceName>> {
    let mut seen = HashSet::with_capacity(names.len());
    let mut devices = Vec::with_capacity(names.len());
    for name in names {
        let device_name: DeviceName =
            name.parse().map_err(|e| ControlError::Invalid(format!("device {name:?}: {e}")))?;
        if !seen.insert(device_name.clone()) {
            return Err(ControlError::Invalid(format!("device {name} is listed twice")));
        }
        devices.push(device_name);
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(error: ControlError) -> String {
        match error {
            ControlError::Invalid(message) => message,
            other => panic!("not an Invalid error: {other:?}"),
        }
    }

    fn list_names(text: &str) -> Result<Vec<String>> {
        let product: ProductKey = "a13FN5TplKq".parse().expect("product key");
        DeviceCsv::open_list(text)?
            .rows()
            .map(|row| row?.device_name_of(&product, "task"))
            .collect()
    }

    #[test]
    fn rows_are_trimmed_and_columns_found_by_name() {
        let csv = DeviceCsv::open("deviceSecret , deviceName\n s1 , lamp-1 \n,lamp-2\n").unwrap();
        assert_eq!((csv.column("deviceName"), csv.column("other")), (Some(1), None));
        let rows: Vec<Row> = csv.rows().collect::<Result<_>>().unwrap();
        let cells: Vec<_> = rows.iter().map(|row| (row.get(0), row.get(1), row.get(9))).collect();
        assert_eq!(cells, [("s1", "lamp-1", ""), ("", "lamp-2", "")]);
        assert_eq!(message(rows[1].invalid("bad")), "CSV row 3: bad");
    }

    #[test]
    fn malformed_rows_name_their_line() {
        let rows: Vec<_> =
            DeviceCsv::open("deviceName\nlamp-1\nlamp-2,extra\n").unwrap().rows().collect();
        assert!(rows[0].is_ok());
        let error = message(rows.into_iter().nth(1).unwrap().err().unwrap());
        assert!(error.starts_with("CSV row 3: "), "{error}");
    }

    #[test]
    fn a_csv_holds_at_most_the_row_limit() {
        let full: String = std::iter::once("deviceName\n".to_owned())
            .chain((0..MAX_CSV_ROWS).map(|n| format!("dev-{n}\n")))
            .collect();
        assert_eq!(
            DeviceCsv::open(&full).unwrap().rows().filter(Result::is_ok).count(),
            MAX_CSV_ROWS
        );
        let over = format!("{full}one-more\n");
        let last = DeviceCsv::open(&over).unwrap().rows().last().unwrap();
        assert_eq!(message(last.err().unwrap()), "CSV holds more than 1000 rows");
    }

    #[test]
    fn device_lists_have_one_header_and_one_product() {
        assert_eq!(list_names("productKey,deviceName\na13FN5TplKq, lamp-1\n").unwrap(), ["lamp-1"]);
        assert_eq!(list_names("productKey,deviceName\n").unwrap(), Vec::<String>::new());
        for header in ["deviceName,productKey\n", "productKey\n", "productKey,deviceName,x\n"] {
            let error = message(list_names(header).err().unwrap());
            assert_eq!(error, "CSV header must be productKey,deviceName");
        }
        let other = list_names("productKey,deviceName\na13FN5TplKq,lamp-1\nb13FN5TplKq,lamp-2\n");
        assert_eq!(
            message(other.err().unwrap()),
            "CSV row 3: productKey must be a13FN5TplKq (one product per task)"
        );
    }

    #[test]
    fn listed_names_are_valid_and_unique() {
        let names = |list: &[&str]| unique_names(list.iter().map(|n| n.to_string()).collect());
        assert_eq!(names(&["lamp-1", "lamp-2"]).unwrap().len(), 2);
        assert_eq!(
            message(names(&["lamp-1", "lamp-1"]).err().unwrap()),
            "device lamp-1 is listed twice"
        );
        assert!(message(names(&["bad name"]).err().unwrap()).starts_with("device \"bad name\": "));
    }
}
