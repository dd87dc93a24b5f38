//! Builds the IGMPv3/MLDv2 report datagrams a tunnel wraps in Membership
//! Updates, split so each fits the configured size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::{EncodeError, GroupRecord, RecordType, encap, igmp, mld};

use super::Family;

/// One record before it is typed for its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) record_type: RecordType,
    pub(crate) group: IpAddr,
    pub(crate) sources: Vec<IpAddr>,
}

pub(crate) struct ReportBuilder {
    pub(crate) src_v4: Ipv4Addr,
    pub(crate) src_v6: Ipv6Addr,
    /// Maximum bytes of group records per report.
    pub(crate) max_records_len: usize,
}

/// Report datagrams and the (group, source) pairs they carry.
pub(crate) struct Built {
    pub(crate) datagrams: Vec<Vec<u8>>,
    pub(crate) sent: Vec<(IpAddr, IpAddr)>,
}

/// `records` typed for one family (records and sources of the other family
/// are skipped).
fn typed<A>(records: &[Record], pick: fn(IpAddr) -> Option<A>) -> Vec<GroupRecord<A>> {
    records
        .iter()
        .filter_map(|r| {
            Some(GroupRecord {
                record_type: r.record_type,
                group: pick(r.group)?,
                sources: r.sources.iter().filter_map(|s| pick(*s)).collect(),
            })
        })
        .collect()
}

fn v4(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

fn v6(a: IpAddr) -> Option<Ipv6Addr> {
    match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

/// The (group, source) pairs of some chunks.
fn pairs<A: Copy + Into<IpAddr>>(chunks: &[Vec<GroupRecord<A>>]) -> Vec<(IpAddr, IpAddr)> {
    chunks
        .iter()
        .flatten()
        .flat_map(|r| r.sources.iter().map(|s| (r.group.into(), (*s).into())))
        .collect()
}

impl ReportBuilder {
    /// Encodes `records` (all of `family`; others are skipped) into as few
    /// report datagrams as the size limit allows. Records with too many
    /// sources are split into several records of the same type and group.
    pub(crate) fn build(
        &self,
        family: Family,
        records: &[Record],
    ) -> Result<Vec<Vec<u8>>, EncodeError> {
        Ok(self.build_limited(family, records, usize::MAX)?.datagrams)
    }

    /// Like [`ReportBuilder::build`], but at most `max_reports` datagrams:
    /// what did not fit is left out, and `sent` says what is in.
    pub(crate) fn build_limited(
        &self,
        family: Family,
        records: &[Record],
        max_reports: usize,
    ) -> Result<Built, EncodeError> {
        match family {
            Family::V4 => self.encode_chunks(
                typed(records, v4),
                igmp::RECORD_HEADER_LEN,
                4,
                max_reports,
                |records| encap::igmpv3_report_datagram(self.src_v4, &igmp::ReportRepr { records }),
            ),
            Family::V6 => self.encode_chunks(
                typed(records, v6),
                mld::RECORD_HEADER_LEN,
                16,
                max_reports,
                |records| encap::mldv2_report_datagram(self.src_v6, &mld::ReportRepr { records }),
            ),
        }
    }

    /// One family's records split to the size limit, at most `max_reports`
    /// chunks of them, each encoded by `encode`.
    fn encode_chunks<A: Copy + Into<IpAddr>>(
        &self,
        records: Vec<GroupRecord<A>>,
        header_len: usize,
        addr_len: usize,
        max_reports: usize,
        encode: impl Fn(Vec<GroupRecord<A>>) -> Result<Vec<u8>, EncodeError>,
    ) -> Result<Built, EncodeError> {
        let mut chunks = split(records, header_len, addr_len, self.max_records_len);
        chunks.truncate(max_reports);
        Ok(Built {
            sent: pairs(&chunks),
            datagrams: chunks.into_iter().map(encode).collect::<Result<_, _>>()?,
        })
    }
}

/// Splits records into reports of at most `max_len` record bytes each.
fn split<A: Copy>(
    records: Vec<GroupRecord<A>>,
    header_len: usize,
    addr_len: usize,
    max_len: usize,
) -> Vec<Vec<GroupRecord<A>>> {
    let per_record = (max_len.saturating_sub(header_len) / addr_len).max(1);
    let mut reports: Vec<Vec<GroupRecord<A>>> = Vec::new();
    let mut current: Vec<GroupRecord<A>> = Vec::new();
    let mut current_len = 0;
    for record in records {
        let pieces: Vec<GroupRecord<A>> = if record.sources.is_empty() {
            vec![record]
        } else {
            record
                .sources
                .chunks(per_record)
                .map(|s| GroupRecord {
                    record_type: record.record_type,
                    group: record.group,
                    sources: s.to_vec(),
                })
                .collect()
        };
        for piece in pieces {
            let len = header_len + addr_len * piece.sources.len();
            if !current.is_empty() && current_len + len > max_len {
                reports.push(std::mem::take(&mut current));
                current_len = 0;
            }
            current_len += len;
            current.push(piece);
        }
    }
    if !current.is_empty() {
        reports.push(current);
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encap::EncapReport;

    fn builder(max: usize) -> ReportBuilder {
        ReportBuilder {
            src_v4: Ipv4Addr::new(10, 0, 0, 2),
            src_v6: "fe80::1".parse().unwrap(),
            max_records_len: max,
        }
    }

    #[test]
    fn small_report_is_one_datagram() {
        let recs = vec![Record {
            record_type: RecordType::AllowNewSources,
            group: "232.1.1.1".parse().unwrap(),
            sources: vec!["192.0.2.1".parse().unwrap()],
        }];
        let out = builder(1100).build(Family::V4, &recs).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 44);
    }

    #[test]
    fn many_groups_are_split_without_loss() {
        let recs: Vec<Record> = (0..300u32)
            .map(|i| Record {
                record_type: RecordType::ModeIsInclude,
                group: IpAddr::V4(Ipv4Addr::from(0xe801_0000 + i)),
                sources: vec!["192.0.2.1".parse().unwrap()],
            })
            .collect();
        let out = builder(1100).build(Family::V4, &recs).unwrap();
        // 12 bytes per record, 91 per report -> 4 reports.
        assert_eq!(out.len(), 4);
        let mut total = 0;
        for d in &out {
            match EncapReport::parse(d).unwrap() {
                EncapReport::Igmp { report, .. } => {
                    assert!(report.buffer_len() - 8 <= 1100);
                    total += report.records.len();
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(total, 300);
    }

    #[test]
    fn many_sources_in_one_group_are_split_into_records() {
        let sources: Vec<IpAddr> = (0..100u128)
            .map(|i| IpAddr::V6(Ipv6Addr::from(0x2001_0db8 << 96 | i)))
            .collect();
        let recs = vec![Record {
            record_type: RecordType::BlockOldSources,
            group: "ff3e::1".parse().unwrap(),
            sources,
        }];
        let out = builder(500).build(Family::V6, &recs).unwrap();
        let mut seen = 0;
        for d in &out {
            match EncapReport::parse(d).unwrap() {
                EncapReport::Mld { report, .. } => {
                    for r in report.records {
                        assert_eq!(r.record_type, RecordType::BlockOldSources);
                        seen += r.sources.len();
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, 100);
        assert!(out.len() >= 4);
    }

    #[test]
    fn wrong_family_records_are_skipped() {
        let recs = vec![Record {
            record_type: RecordType::AllowNewSources,
            group: "ff3e::1".parse().unwrap(),
            sources: vec!["2001:db8::1".parse().unwrap()],
        }];
        assert!(builder(1100).build(Family::V4, &recs).unwrap().is_empty());
    }
}
