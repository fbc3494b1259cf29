use super::*;

fn open(dir: &Path) -> (Journal, Vec<RawRecord>) {
    Journal::open(dir, 4096, 1 << 20, Faults::default()).unwrap()
}

fn payloads(records: &[RawRecord]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.payload.to_vec()).collect()
}

#[test]
fn append_and_replay_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, recs) = open(dir.path());
    assert!(recs.is_empty());
    let mut written = Vec::new();
    for i in 0..200u32 {
        let p = format!("record {i} {}", "x".repeat((i % 50) as usize)).into_bytes();
        let loc = j.append((i % 5) as u8, &p).unwrap();
        written.push((loc, p));
        if i % 7 == 0 {
            j.flush().unwrap();
        }
    }
    j.flush().unwrap();
    j.sync().unwrap();
    assert!(j.segments().len() > 2, "small segments rotate");
    drop(j);
    let (mut j, recs) = open(dir.path());
    assert_eq!(
        payloads(&recs),
        written.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>()
    );
    for (r, (loc, _)) in recs.iter().zip(&written) {
        assert_eq!(r.location, *loc);
    }
    // Reading a record back by its location.
    let (kind, payload) = j.read(written[150].0).unwrap();
    assert_eq!(kind, 0);
    assert_eq!(payload.to_vec(), written[150].1);
}

#[test]
fn a_torn_tail_is_cut_at_every_byte_offset_of_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = open(dir.path());
    j.append(1, b"first record").unwrap();
    j.append(1, b"second record").unwrap();
    let last = j.append(2, b"the last record, to be torn").unwrap();
    j.flush().unwrap();
    j.sync().unwrap();
    drop(j);
    let path = segment_path(dir.path(), last.segment);
    let full = std::fs::read(&path).unwrap();
    for cut in last.offset as usize..full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        let (mut j, recs) = open(dir.path());
        assert_eq!(
            payloads(&recs),
            vec![b"first record".to_vec(), b"second record".to_vec()],
            "cut at {cut}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            last.offset,
            "truncated back at {cut}"
        );
        // Appending after recovery continues cleanly.
        j.append(3, b"after").unwrap();
        j.flush().unwrap();
        drop(j);
        let (_, recs) = open(dir.path());
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2].payload.to_vec(), b"after");
    }
}

#[test]
fn a_flipped_byte_in_the_tail_is_detected_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = open(dir.path());
    j.append(1, b"good").unwrap();
    let bad = j.append(1, b"will be damaged").unwrap();
    j.flush().unwrap();
    drop(j);
    let path = segment_path(dir.path(), bad.segment);
    let mut data = std::fs::read(&path).unwrap();
    let at = bad.offset as usize + RECORD_HEADER_LEN + 3;
    data[at] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
    let (_, recs) = open(dir.path());
    assert_eq!(payloads(&recs), vec![b"good".to_vec()]);
}

#[test]
fn corruption_before_the_last_segment_is_refused_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = open(dir.path());
    let first = j.append(1, &[7u8; 3000]).unwrap();
    j.append(1, &[8u8; 3000]).unwrap(); // rotates: the first segment is no longer last
    j.flush().unwrap();
    drop(j);
    let path = segment_path(dir.path(), first.segment);
    let mut data = std::fs::read(&path).unwrap();
    data[first.offset as usize + 20] ^= 1;
    std::fs::write(&path, &data).unwrap();
    match Journal::open(dir.path(), 4096, 1 << 20, Faults::default()) {
        Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, first.offset),
        other => panic!(
            "expected a corruption error, got {:?}",
            other.map(|(_, r)| r.len())
        ),
    }
}

#[test]
fn a_huge_length_is_corruption_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = open(dir.path());
    let loc = j.append(1, b"x").unwrap();
    j.flush().unwrap();
    drop(j);
    let path = segment_path(dir.path(), loc.segment);
    let mut data = std::fs::read(&path).unwrap();
    data[loc.offset as usize..loc.offset as usize + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, &data).unwrap();
    let (_, recs) = open(dir.path());
    assert!(recs.is_empty());
}

#[test]
fn a_failed_write_leaves_no_partial_record() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let (mut j, _) = Journal::open(dir.path(), 1 << 20, 1 << 20, faults.clone()).unwrap();
    j.append(1, b"kept").unwrap();
    j.flush().unwrap();
    faults.fail_writes.store(true, Ordering::Relaxed);
    j.append(1, b"lost").unwrap();
    assert!(j.flush().is_err());
    faults.fail_writes.store(false, Ordering::Relaxed);
    j.append(1, b"after").unwrap();
    j.flush().unwrap();
    faults.fail_syncs.store(true, Ordering::Relaxed);
    assert!(j.sync().is_err());
    drop(j);
    let (_, recs) = open(dir.path());
    assert_eq!(payloads(&recs), vec![b"kept".to_vec(), b"after".to_vec()]);
}

#[test]
fn old_segments_can_be_deleted_but_not_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = open(dir.path());
    for _ in 0..10 {
        j.append(1, &[1u8; 1500]).unwrap();
    }
    j.flush().unwrap();
    let first = *j.segments().keys().next().unwrap();
    let head = j.head_segment();
    assert_ne!(first, head);
    j.delete_segment(first).unwrap();
    j.delete_segment(head).unwrap();
    assert!(!j.segments().contains_key(&first));
    assert!(j.segments().contains_key(&head));
    drop(j);
    let (_, recs) = open(dir.path());
    assert!(recs.iter().all(|r| r.location.segment != first));
}

#[test]
fn a_failed_batch_is_undone_except_what_a_rotation_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let (mut j, _) = Journal::open(dir.path(), 4096, 1 << 20, faults.clone()).unwrap();
    j.append(1, b"earlier batch").unwrap();
    j.flush().unwrap();
    let mark = j.mark();
    // One batch: the first record fills the segment, the second rotates
    // (which writes and syncs the first), the third fails with the disk.
    let first = j.append(1, &[7u8; 3000]).unwrap();
    let second = j.append(1, &[8u8; 3000]).unwrap();
    assert_ne!(first.segment, second.segment);
    assert!(j.is_durable(first) && !j.is_durable(second));
    j.flush().unwrap();
    faults.fail_syncs.store(true, Ordering::Relaxed);
    assert!(j.sync().is_err());
    assert!(!j.is_durable(second));
    j.undo_to(mark).unwrap();
    faults.fail_syncs.store(false, Ordering::Relaxed);
    j.append(1, b"next batch").unwrap();
    j.flush().unwrap();
    j.sync().unwrap();
    drop(j);
    let (_, recs) = open(dir.path());
    assert_eq!(
        payloads(&recs),
        vec![
            b"earlier batch".to_vec(),
            vec![7u8; 3000],
            b"next batch".to_vec()
        ]
    );
}

#[test]
fn undo_keeps_earlier_batches_that_are_written_but_not_synced() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let (mut j, _) = Journal::open(dir.path(), 1 << 20, 1 << 20, faults.clone()).unwrap();
    j.append(1, b"acks, written without a sync").unwrap();
    j.flush().unwrap();
    let mark = j.mark();
    j.append(1, b"a send whose sync fails").unwrap();
    j.flush().unwrap();
    faults.fail_syncs.store(true, Ordering::Relaxed);
    assert!(j.sync().is_err());
    j.undo_to(mark).unwrap();
    faults.fail_syncs.store(false, Ordering::Relaxed);
    j.sync().unwrap();
    drop(j);
    let (_, recs) = open(dir.path());
    assert_eq!(
        payloads(&recs),
        vec![b"acks, written without a sync".to_vec()]
    );
}

#[test]
fn records_over_a_lowered_limit_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), 1 << 20, 1 << 20, Faults::default()).unwrap();
    j.append(1, b"small").unwrap();
    let big = j.append(1, &[5u8; 10_000]).unwrap();
    j.append(1, b"after the big one").unwrap();
    j.flush().unwrap();
    j.sync().unwrap();
    drop(j);
    // Restarted with a limit below the big record: nothing is cut off.
    let (mut j, recs) = Journal::open(dir.path(), 1 << 20, 1000, Faults::default()).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2].payload.as_ref(), b"after the big one");
    assert_eq!(j.read(big).unwrap().1.len(), 10_000);
    // New records over it are refused on their own.
    assert!(matches!(
        j.append(1, &[0u8; 2000]),
        Err(JournalError::TooLarge {
            len: 2000,
            max: 1000
        })
    ));
}

#[test]
fn a_failed_rotation_leaves_the_head_segment_last() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let (mut j, _) = Journal::open(dir.path(), 4096, 1 << 20, faults.clone()).unwrap();
    j.append(1, &[1u8; 3000]).unwrap();
    j.flush().unwrap();
    // The new segment is created but cannot be set up: it is removed, and
    // the records go on in the old one.
    faults.fail_new_segments.store(true, Ordering::Relaxed);
    assert!(j.append(1, &[2u8; 3000]).is_err());
    faults.fail_new_segments.store(false, Ordering::Relaxed);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let last = j.append(1, b"small, still fits").unwrap();
    j.flush().unwrap();
    drop(j);
    // A crash tears that segment's tail: it is the last one, so the tail is
    // cut and the journal opens.
    let path = segment_path(dir.path(), last.segment);
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (_, recs) = open(dir.path());
    assert_eq!(payloads(&recs), vec![vec![1u8; 3000]]);
}

#[test]
fn recovery_reads_one_segment_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = open(dir.path());
    for i in 0..40u32 {
        j.append(1, &[i as u8; 500]).unwrap();
    }
    j.flush().unwrap();
    let segments = j.segments().len();
    assert!(segments > 3);
    drop(j);
    let mut visits = Vec::new();
    let mut next = 0u8;
    Journal::open_with(
        dir.path(),
        4096,
        1 << 20,
        Faults::default(),
        |records, n| {
            assert_eq!(n, segments);
            // Each visit is one whole segment, in order.
            assert!(records
                .windows(2)
                .all(|w| w[0].location.segment == w[1].location.segment));
            for r in &records {
                assert_eq!(r.payload[0], next);
                next += 1;
            }
            visits.push(records.len());
        },
    )
    .unwrap();
    assert_eq!(visits.len(), segments);
    assert_eq!(next, 40);
}
