//! The offsets table (agent/data/go-offsets.json) against real binaries other than the probe
//! program it was generated from: for every installed Go release, the DWARF of the goserver
//! test app agrees with the table's entry, a Go 1.22+ server without DWARF is analysed with
//! the same mux layout as its default build, and the agent reads live route patterns out of
//! such servers with the table's offsets.

use std::{path::PathBuf, time::Duration};

use obs_agent::symbols::{
    buildinfo,
    elf::ElfFile,
    go_binary,
    offsets::{self, GoRelease, LayoutSource},
};
use obs_integration_tests::{
    go_build, objcopy, toolchains, wait_for, Agent, BuildMode, GoServer, Toolchain,
};

fn release(toolchain: &Toolchain) -> GoRelease {
    GoRelease::parse(&toolchain.minor).expect("MAJOR.MINOR")
}

/// The default build of goserver with its DWARF removed (`objcopy --strip-debug`): symbols
/// stay, so functions are found without a `.gopclntab` reader.
fn without_dwarf(toolchain: &Toolchain) -> PathBuf {
    let bin = go_build("goserver", toolchain, BuildMode::Default);
    let name = format!("goserver-go{}-nodwarf", toolchain.minor);
    objcopy(&bin, "--strip-debug", &name)
}

/// goserver's default build (symbols and DWARF), analysed.
fn analysed_default_build(toolchain: &Toolchain) -> go_binary::GoBinary {
    go_binary::analyze_path(&go_build("goserver", toolchain, BuildMode::Default))
        .unwrap_or_else(|e| panic!("Go {}: {e}", release(toolchain)))
}

fn bin_client(toolchain: &obs_integration_tests::Toolchain) -> std::path::PathBuf {
    go_build("goclient", toolchain, BuildMode::Default)
}

#[test]
fn table_agrees_with_the_dwarf_of_every_release() {
    let table = offsets::embedded().expect("the embedded offsets table parses");
    for toolchain in toolchains() {
        // A server for the ServeMux structs, a client for net/http's transport.
        let mut dwarf = offsets::dwarf_layouts(&ElfFile::open(&bin_client(&toolchain)).unwrap())
            .unwrap()
            .expect("goclient has DWARF");
        let bin = go_build("goserver", &toolchain, BuildMode::Default);
        let elf = ElfFile::open(&bin).unwrap();
        dwarf.extend(
            offsets::dwarf_layouts(&elf)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: no DWARF", bin.display())),
        );
        let release = release(&toolchain);
        let (_, entry) = table
            .releases
            .iter()
            .find(|(r, _)| *r == release)
            .unwrap_or_else(|| panic!("Go {release} is not in the table: cargo xtask go-offsets"));
        assert_eq!(
            offsets::differences(&entry.layouts, &dwarf),
            Vec::<String>::new(),
            "Go {release}: the table ({}) and goserver's DWARF differ",
            entry.toolchain
        );
    }
}

#[test]
fn server_without_dwarf_gets_the_same_mux_layout_from_the_table() {
    for toolchain in toolchains() {
        let release = release(&toolchain);
        let default = analysed_default_build(&toolchain);
        let no_dwarf = go_binary::analyze_path(&without_dwarf(&toolchain))
            .unwrap_or_else(|e| panic!("Go {release} without DWARF: {e}"));
        assert_eq!(
            no_dwarf.mux_discovery, default.mux_discovery,
            "Go {release}"
        );
        if toolchain.has_patterns() {
            assert!(
                default.mux_discovery.is_some(),
                "Go {release}: no mux layout"
            );
            assert_eq!(default.layout_source, Some(LayoutSource::Dwarf));
            match no_dwarf.layout_source {
                Some(LayoutSource::Table {
                    release: used,
                    assumed: false,
                    ..
                }) => assert_eq!(used, release),
                other => panic!("Go {release} without DWARF: layouts from {other:?}"),
            }
        } else {
            // No routing tree before Go 1.22: no layouts needed, none looked up.
            assert_eq!(no_dwarf.layout_source, None, "Go {release}");
        }
    }
}

/// End to end: the agent watches servers without DWARF of every Go 1.22+ release and labels
/// requests with the ServeMux pattern it read from their memory at the table's offsets.
#[test]
fn routes_of_servers_without_dwarf_are_read_with_table_offsets() {
    let servers: Vec<(String, GoServer)> = toolchains()
        .into_iter()
        .filter(Toolchain::has_patterns)
        .map(|toolchain| {
            let service = format!("nodwarf-go{}", toolchain.minor);
            let server = GoServer::start_bin(
                &without_dwarf(&toolchain),
                &[("OTEL_SERVICE_NAME", &service)],
            );
            (service, server)
        })
        .collect();
    let pids: Vec<u32> = servers.iter().map(|(_, s)| s.proc.pid()).collect();
    let agent = Agent::for_pids_with(&pids, &["--log-level", "debug"]);
    for (service, server) in &servers {
        // The first requests discover the mux; its patterns are read right after.
        let routed = wait_for(Duration::from_secs(10), || {
            ureq::get(&server.url("/v2/items/abc")).call().ok()?;
            let counts = agent.scrape().server_counts(service);
            counts
                .contains_key("GET /v2/items/{name} 200")
                .then_some(())
        });
        assert!(
            routed.is_some(),
            "{service}: no request labelled with its pattern; agent counts {:?}; log:\n{}",
            agent.scrape().server_counts(service),
            agent.log()
        );
    }
    let log = agent.log();
    for (service, server) in &servers {
        let minor = service.trim_start_matches("nodwarf-go");
        let said = format!(
            "pid {}: struct offsets from offsets table, Go {minor} ",
            server.proc.pid()
        );
        assert!(
            log.contains(&said),
            "no {said:?} in the agent's log:\n{log}"
        );
    }
}

/// Stripped builds (`-ldflags=-s -w`) have no symbol table either. Their layouts come from
/// the table; this compares that path with the default build's DWARF.
#[test]
fn stripped_server_layouts_come_from_the_table() {
    for toolchain in toolchains().into_iter().filter(Toolchain::has_patterns) {
        let release = release(&toolchain);
        let default = analysed_default_build(&toolchain);
        let (_, dwarf_layout) = default.mux_discovery.expect("mux layout from DWARF");

        let stripped =
            ElfFile::open(&go_build("goserver", &toolchain, BuildMode::Stripped)).unwrap();
        let build = buildinfo::parse(&stripped.section(".go.buildinfo").unwrap()).unwrap();
        let (layouts, source) = offsets::layouts_for(&stripped, &build)
            .unwrap_or_else(|e| panic!("Go {release} stripped: {e}"));
        assert!(
            matches!(source, LayoutSource::Table { release: used, .. } if used == release),
            "Go {release} stripped: layouts from {source}"
        );
        let table_layout = go_binary::mux_layout(&layouts).unwrap();
        assert_eq!(table_layout, dwarf_layout, "Go {release}");
    }
}

/// The whole analysis of a stripped build: functions from the `.gopclntab`, layouts from the
/// table.
#[test]
fn stripped_server_is_analysed_like_the_default_build() {
    for toolchain in toolchains().into_iter().filter(Toolchain::has_patterns) {
        let release = release(&toolchain);
        let default = analysed_default_build(&toolchain);
        let stripped =
            go_binary::analyze_path(&go_build("goserver", &toolchain, BuildMode::Stripped))
                .unwrap_or_else(|e| panic!("Go {release} stripped: {e}"));
        assert_eq!(
            stripped.mux_discovery.map(|(_, layout)| layout),
            default.mux_discovery.map(|(_, layout)| layout),
            "Go {release}"
        );
    }
}
