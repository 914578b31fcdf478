//! Filling a running daemon's pinned source table from a test, as a flood would leave it: the
//! table's shape (seed and size) is read from the pinned config the daemon wrote, so each
//! source lands in the set the kernel will probe.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::{Array, Map, MapData};
use monitor::source_table::SourceTable;
use monitor_common::{addr::AddrKey, config::ConfigSlots, table::SourceSlot};

/// Writes `entries` into the source table pinned under `pin_dir`; returns how many found their
/// set full (left out). Panics with the reason if the pins cannot be read or written.
pub fn fill_pinned_sources(pin_dir: &Path, entries: &[(AddrKey, SourceSlot)]) -> usize {
    let config = MapData::from_pin(pin_dir.join("MON_CONFIG")).expect("open pinned MON_CONFIG");
    let config: Array<MapData, ConfigSlots> =
        Array::try_from(Map::Array(config)).expect("MON_CONFIG is an array");
    let live = *config.get(&0, 0).expect("read MON_CONFIG").live();
    assert!(live.is_valid(), "the daemon has not written its config yet");
    let data = MapData::from_pin(pin_dir.join("MON_SOURCES")).expect("open pinned MON_SOURCES");
    let fd = data.fd().as_fd().as_raw_fd();
    let table = SourceTable::map(fd, live.table).expect("map the source table");
    let (sets, left_out) = table.place(entries);
    monitor::batch::write_all(fd, &sets).expect("write the source table");
    left_out
}
