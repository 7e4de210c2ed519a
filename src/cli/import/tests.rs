//! The import file format: header, columns, quoting, line numbers, streaming.

use super::*;

#[test]
fn good_rows_are_parsed_and_bad_ones_rejected_by_line() {
    let text = "msisdn,preset_balance,sold,initial_validity_days\n\
                +8613800000001,500,true,365\n\
                \n\
                8613800000002,,,\n\
                12ab,0,true,0\n\
                8613800000003,-1,true,0\n\
                8613800000004,0,maybe,0\n\
                8613800000005,0,true\n\
                \"8613800000001\",0,no,0\n";
    let (rows, rejected) = parse_csv(text).unwrap();
    assert_eq!(
        rows,
        vec![
            ImportRow {
                line: 2,
                msisdn: "8613800000001".into(),
                preset_balance: 500,
                sold: true,
                initial_validity_days: 365,
            },
            ImportRow {
                line: 4,
                msisdn: "8613800000002".into(),
                preset_balance: 0,
                sold: false,
                initial_validity_days: 0,
            },
        ]
    );
    let lines: Vec<usize> = rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![5, 6, 7, 8, 9]);
    assert!(
        rejected[0].reason.contains("INVALID_MSISDN"),
        "{rejected:?}"
    );
    assert!(
        rejected[1].reason.contains("preset_balance"),
        "{rejected:?}"
    );
    assert!(rejected[2].reason.contains("sold"), "{rejected:?}");
    assert!(rejected[3].reason.contains("3 cells"), "{rejected:?}");
    assert!(rejected[4].reason.contains("line 2"), "{rejected:?}");
}

#[test]
fn columns_are_matched_by_name_in_any_order_and_may_be_left_out() {
    let (rows, rejected) = parse_csv("msisdn,preset_balance\r\n8613800000001,100\r\n").unwrap();
    assert!(rejected.is_empty());
    assert_eq!(rows[0].preset_balance, 100);
    let text = "Sold, initial_validity_days ,MSISDN,preset_balance\n\
                yes,30,8613800000001,7\n";
    let (rows, rejected) = parse_csv(text).unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(
        rows,
        vec![ImportRow {
            line: 2,
            msisdn: "8613800000001".into(),
            preset_balance: 7,
            sold: true,
            initial_validity_days: 30,
        }]
    );
    assert_eq!(
        parse_csv("preset_balance,msisdn\n").unwrap(),
        (vec![], vec![])
    );
    assert!(parse_csv("").is_err());
    assert!(parse_csv("\n\n").is_err());
}

#[test]
fn a_row_is_reported_at_the_line_it_starts_on_across_blank_lines_and_crlf() {
    let text = "\r\nmsisdn,sold\r\n\r\n \r\n8613800000001,yes\r\n\n\r\n12,no\r\n\"8613800000002\",\"ye\r\ns\"\r\n";
    let (rows, rejected) = parse_csv(text).unwrap();
    let lines: Vec<usize> = rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, [5]);
    let lines: Vec<(usize, &str)> = rejected
        .iter()
        .map(|r| (r.line, r.reason.as_str()))
        .collect();
    assert_eq!(lines.len(), 2, "{rejected:?}");
    assert_eq!(lines[0].0, 8);
    assert_eq!(lines[1].0, 9);
    assert!(lines[1].1.contains("sold"), "{rejected:?}");
}

#[test]
fn unknown_columns_are_ignored_and_named_once() {
    let text = "colour,msisdn,note\nred,8613800000001,x\nblue,8613800000002,y\n";
    let reader = ImportReader::new(text.as_bytes()).unwrap();
    assert_eq!(reader.unknown_columns(), ["colour", "note"]);
    let (rows, rejected) = parse_csv(text).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rejected.is_empty());
}

#[test]
fn a_header_without_msisdn_or_with_a_column_twice_is_refused_by_name() {
    let err = parse_csv("number,preset_balance\n1,2\n").unwrap_err();
    assert!(err.contains("no msisdn column"), "{err}");
    assert!(err.starts_with("line 1: the header"), "{err}");
    let err = parse_csv("\nmsisdn,sold,SOLD\n").unwrap_err();
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("sold twice"), "{err}");
}

#[test]
fn quoted_fields_hold_commas_doubled_quotes_and_line_breaks() {
    let text = "note,msisdn,preset_balance,initial_validity_days\n\
                \"a, b\",8613800000001,\"1,000\",\"1,095\"\n\
                \"say \"\"hi\"\"\",\"+8613800000002\",\" 12 \",\n\
                \"two\nlines\",8613800000003,0,\n\
                x,\"86138\"\"4\",0,\n\
                x,8613800000005,\"1,00\",\n";
    let (rows, rejected) = parse_csv(text).unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.line,
                r.msisdn.as_str(),
                r.preset_balance,
                r.initial_validity_days,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (2, "8613800000001", 1000, 1095),
            (3, "8613800000002", 12, 0),
            (4, "8613800000003", 0, 0),
        ]
    );
    // The quoted line break makes the record two lines long: the next one starts on line 6.
    let expected = [
        (6, "86138\"4", "INVALID_MSISDN"),
        (7, "8613800000005", "preset_balance \"1,00\""),
    ];
    assert_eq!(rejected.len(), expected.len(), "{rejected:?}");
    for (got, (line, msisdn, reason)) in rejected.iter().zip(expected) {
        assert_eq!((got.line, got.msisdn.as_str()), (line, msisdn));
        assert!(got.reason.contains(reason), "{got:?}");
    }
}

#[test]
fn a_byte_order_mark_and_a_row_that_is_not_utf8_are_handled() {
    let (rows, _) = parse_csv("\u{feff}msisdn\n8613800000001\n").unwrap();
    assert_eq!(rows.len(), 1);
    let bytes = b"msisdn\n8613800000001\n861380000000\xff\n8613800000003\n";
    let mut reader = ImportReader::new(&bytes[..]).unwrap();
    let mut results = Vec::new();
    while let Some(row) = reader.next_row().unwrap() {
        results.push(row.map(|r| r.line).map_err(|r| (r.line, r.reason)));
    }
    assert_eq!(
        results,
        [
            Ok(2),
            Err((3, "the row is not UTF-8 text".to_owned())),
            Ok(4)
        ]
    );
}

/// Serves `rows` generated rows of CSV without ever holding them, counting the bytes read.
struct Generated {
    next: usize,
    rows: usize,
    pending: Vec<u8>,
    served: Arc<AtomicUsize>,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() && self.next <= self.rows {
            self.pending = if self.next == 0 {
                b"msisdn,sold,preset_balance\n".to_vec()
            } else {
                format!("86{:011},yes,\"1,{:03}\"\n", self.next, self.next % 1000).into_bytes()
            };
            self.next += 1;
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        self.served.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn a_million_rows_are_read_as_a_stream() {
    let served = Arc::new(AtomicUsize::new(0));
    let rows = 1_000_000;
    let input = Generated {
        next: 0,
        rows,
        pending: Vec::new(),
        served: served.clone(),
    };
    let mut reader = ImportReader::new(input).unwrap();
    let first = reader.next_row().unwrap().unwrap().unwrap();
    assert_eq!((first.line, first.preset_balance), (2, 1001));
    assert!(
        served.load(Ordering::Relaxed) < 64 * 1024,
        "the first row came without reading ahead: {} bytes",
        served.load(Ordering::Relaxed)
    );
    let mut count = 1;
    while let Some(row) = reader.next_row().unwrap() {
        let row = row.unwrap();
        assert_eq!(row.line, count + 2);
        count += 1;
    }
    assert_eq!(count, rows);
    assert!(served.load(Ordering::Relaxed) > 25 * rows);
}

#[test]
fn the_request_id_depends_on_the_content_only() {
    let (a, _) = parse_csv("msisdn,preset_balance,sold\n+8613800000001,,yes\n").unwrap();
    let (b, _) = parse_csv("msisdn,preset_balance,sold\n\n 8613800000001 ,0,true\n").unwrap();
    assert_eq!(a[0].request_id(), b[0].request_id());
    assert!(a[0].request_id().starts_with("import:"));
    assert!(a[0].request_id().len() <= 128);
    let (c, _) = parse_csv("msisdn,preset_balance,sold\n8613800000001,0,no\n").unwrap();
    assert_ne!(a[0].request_id(), c[0].request_id());
}
