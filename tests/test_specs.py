"""Tests for harness/hardware/specs/: the datasheet table, name matching, lookup, derivation, resolve and explain."""

import pytest

from harness.hardware import specs
from harness.hardware.specs import derivation, gpu_table, name_matching
from harness.measure.dtype_names import PEAK_KEYS
from harness.hardware.device import DeviceFacts

REPORTED = [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200-sxm"),
    ("NVIDIA H200 NVL", "h200-nvl"),
    ("NVIDIA H800", "h800-sxm"),
    ("NVIDIA H20", "h20"),
    ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-sxm-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
    ("NVIDIA A100-PCIE-40GB", "a100-pcie-40gb"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA L40", "l40"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA B200", "b200"),
    ("NVIDIA GB200", "gb200"),
    ("AMD Instinct MI300X", "mi300x"),
    ("AMD Instinct MI300X VF", "mi300x"),
    ("AMD Instinct MI325X", "mi325x"),
    ("AMD Instinct MI355X", "mi355x"),
]


def hopper_like(**overrides) -> DeviceFacts:
    """An NVIDIA GPU the table does not know, with H100 SXM's counts and tensor clock."""
    facts = dict(
        kind="cuda",
        name="NVIDIA Hopper Engineering Sample",
        vendor="nvidia",
        compute_capability=(9, 0),
        sm_count=132,
        max_sm_clock_mhz=1830,
        max_mem_clock_mhz=2619,
        memory_bus_width_bits=5120,
        total_memory_bytes=80 * 2**30,
        l2_bytes=50 * 2**20,
    )
    facts.update(overrides)
    return DeviceFacts(**facts)


# ------------------------------------------------------------------------------ matching


@pytest.mark.parametrize("reported, key", REPORTED)
def test_reported_names_match_their_entry(reported, key):
    spec = name_matching.match(reported)
    assert spec is not None and spec.key == key
    assert spec.origin == "datasheet"
    assert reported in spec.reason and "/" in spec.reason


@pytest.mark.parametrize("reported, key", REPORTED)
def test_matching_ignores_case_separators_and_spacing(reported, key):
    mangled = "  " + reported.upper().replace(" ", "__").replace("-", " - ") + " "
    assert name_matching.match(mangled).key == key


@pytest.mark.parametrize(
    "reported, key",
    [
        ("NVIDIA H20", "h20"),
        ("NVIDIA H200", "h200-sxm"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40", "l40"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA A10", "a10"),
        ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200 NVL", "h200-nvl"),
        ("NVIDIA A100-SXM4-40GB", "a100-sxm-40gb"),
    ],
)
def test_near_misses_do_not_cross(reported, key):
    assert name_matching.match(reported).key == key


@pytest.mark.parametrize(
    "reported",
    [
        "NVIDIA A10G",  # AWS part, different tensor rates: no datasheet entry
        "NVIDIA H800 PCIe",
        "NVIDIA H20-3e",
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA A100",  # memory size unknown: 40GB and 80GB differ in bandwidth
        "NVIDIA L4T",
        "AMD Instinct MI300A",
        "NVIDIA H2",
        "",
    ],
)
def test_unknown_or_ambiguous_names_match_nothing(reported):
    assert name_matching.match(reported) is None


def test_normalize_name():
    assert gpu_table.normalize_name("NVIDIA A100-SXM4-80GB") == "a100 sxm4 80gb"
    assert gpu_table.normalize_name("AMD  Instinct_MI300X ") == "instinct mi300x"
    assert gpu_table.normalize_name("nvidia") == "nvidia"


# ------------------------------------------------------------------------------ lookup


@pytest.mark.parametrize(
    "name", ["h100-sxm", "H100-SXM", "H100 SXM", "h100 sxm", "NVIDIA H100 80GB HBM3"]
)
def test_lookup_by_key_canonical_or_reported_name(name):
    assert specs.lookup(name).key == "h100-sxm"


def test_lookup_unknown_lists_valid_keys():
    with pytest.raises(ValueError) as err:
        specs.lookup("H100")
    assert "h100-sxm" in str(err.value) and "mi300x" in str(err.value)


# ------------------------------------------------------------------------------ the table


def test_every_entry_is_sourced_and_positive():
    table = specs.table()
    assert len(table) >= 20
    for spec in table:
        assert spec.source.startswith("https://"), spec.key
        assert spec.origin == "datasheet"
        assert spec.peaks_tflops and all(v > 0 for v in spec.peaks_tflops.values()), spec.key
        assert set(spec.peaks_tflops) <= set(PEAK_KEYS), spec.key
        for value in (spec.memory_gb, spec.sms, spec.boost_mhz, spec.l2_mb):
            assert value is None or value > 0, spec.key


def test_keys_and_names_are_unique():
    table = specs.table()
    assert len({s.key for s in table}) == len(table)
    assert len({s.name.lower() for s in table}) == len(table)


def test_bandwidths_are_plausible_tb_per_s():
    for spec in specs.table():
        assert 0.1 <= spec.bandwidth_tbs <= 10, spec.key
        assert spec.bandwidth_bytes == pytest.approx(spec.bandwidth_tbs * 1e12)


def test_fp16_equals_bf16_everywhere_both_are_listed():
    for spec in specs.table():
        peaks = spec.peaks_tflops
        if "fp16" in peaks and "bf16" in peaks:
            assert peaks["fp16"] == peaks["bf16"], spec.key


def test_known_mistakes_are_avoided():
    assert specs.lookup("h100-sxm").bandwidth_tbs == 3.35  # 2.0 is the PCIe part
    assert specs.lookup("rtx-4090").peaks_tflops["bf16"] == pytest.approx(165.2)  # not 82.6
    b200, h100 = specs.lookup("b200"), specs.lookup("h100-sxm")
    assert b200.peaks_tflops["bf16"] > 2 * h100.peaks_tflops["bf16"]  # not H100 numbers
    assert b200.bandwidth_tbs > 2 * h100.bandwidth_tbs
    assert specs.lookup("a100-sxm-40gb").bandwidth_tbs == 1.555
    assert specs.lookup("a100-sxm-80gb").bandwidth_tbs == 2.039
    assert "fp8" not in specs.lookup("a100-sxm-80gb").peaks_tflops


def test_peak_flops_units():
    spec = specs.lookup("a100-sxm-80gb")
    assert spec.peak_flops("bf16") == pytest.approx(312e12)
    assert spec.peak_flops("fp8") is None
    assert spec.to_dict()["peaks_tflops"]["bf16"] == 312


GOOD_ENTRY = dict(
    name="Test GPU",
    key="test-gpu",
    match=["^test gpu$"],
    arch="hopper / sm90",
    peaks_tflops={"bf16": 100},
    bandwidth_tbs=1.0,
    memory_gb=10,
    source="https://example.com/datasheet",
)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("source", None, "source: missing"),
        ("source", "a datasheet", "source: must be the URL"),
        ("bandwidth_tbs", 3350, "not a plausible TB/s"),
        ("bandwidth_tbs", -1, "bandwidth_tbs: must be a positive"),
        ("peaks_tflops", {"bf16": 0}, "peaks_tflops.bf16: must be a positive"),
        ("peaks_tflops", {"fp6": 10}, "peaks_tflops.fp6: unknown dtype"),
        ("match", ["(unclosed"], "match: bad regular expression"),
        ("match", [], "match: must be a non-empty list"),
        ("sms", 13.5, "sms: must be a positive integer"),
        ("key", "Test GPU", "key: must be lowercase"),
        ("colour", "green", "colour: unknown field"),
    ],
)
def test_broken_entries_name_entry_and_field(field, value, message):
    entry = dict(GOOD_ENTRY, **{field: value})
    with pytest.raises(ValueError, match=r"^gpus\.yaml entry 0 \((test-gpu|Test GPU)\): ") as err:
        gpu_table.parse([entry])
    assert message in str(err.value)


def test_duplicate_keys_are_rejected():
    with pytest.raises(ValueError, match="repeats entry 0"):
        gpu_table.parse([GOOD_ENTRY, dict(GOOD_ENTRY, name="Other")])


# ------------------------------------------------------------------------------ derivation


def test_derive_hopper_like_reproduces_datasheet():
    spec = derivation.derive(hopper_like())
    assert spec.origin == "derived"
    assert spec.peaks_tflops["bf16"] == pytest.approx(989, rel=0.002)
    assert spec.peaks_tflops["fp8"] == pytest.approx(1979, rel=0.002)
    assert spec.bandwidth_tbs == pytest.approx(3.35, rel=0.002)
    assert spec.memory_gb == 80 and spec.l2_mb == 50 and spec.sms == 132
    assert "132 SMs x 1830 MHz" in spec.reason and "5120-bit bus" in spec.reason


@pytest.mark.parametrize(
    "key, cc, clock_mhz, dtypes",
    [
        ("a100-sxm-80gb", (8, 0), 1410, ["fp64", "fp32", "tf32", "bf16", "int8"]),
        ("a10", (8, 6), 1695, ["fp32", "tf32", "bf16", "int8"]),
        ("l4", (8, 9), 2040, ["fp32", "tf32", "bf16", "fp8", "int8"]),
        ("l40s", (8, 9), 2520, ["fp32", "tf32", "bf16", "fp8"]),
        ("h100-sxm", (9, 0), 1830, ["tf32", "bf16", "fp8", "int8"]),  # tensor clock
        ("h100-sxm", (9, 0), 1980, ["fp64", "fp32"]),  # max boost: fp32 and FP64 tensor cores use it
        ("h100-pcie", (9, 0), 1755, ["fp64", "fp32"]),
        ("b200", (10, 0), 1860, ["tf32", "bf16", "fp8", "int8", "fp4"]),
        ("b200", (10, 0), 1980, ["fp32"]),
    ],
)
def test_per_sm_rates_reproduce_known_datasheets(key, cc, clock_mhz, dtypes):
    sheet = specs.lookup(key)
    facts = hopper_like(compute_capability=cc, sm_count=sheet.sms, max_sm_clock_mhz=clock_mhz)
    derived = derivation.derive(facts).peaks_tflops
    for dtype in dtypes:
        assert derived[dtype] == pytest.approx(sheet.peaks_tflops[dtype], rel=0.025), dtype


def test_derive_with_missing_facts_leaves_values_empty():
    spec = derivation.derive(hopper_like(max_sm_clock_mhz=None, memory_bus_width_bits=None,
                                    total_memory_bytes=None, l2_bytes=None))
    assert spec.peaks_tflops == {} and spec.peak_flops("bf16") is None
    assert spec.bandwidth_tbs is None and spec.bandwidth_bytes is None
    assert spec.memory_gb is None and spec.l2_mb is None
    assert "no peaks" in spec.reason and "no bandwidth" in spec.reason


def test_derive_unknown_architecture_gives_no_peaks_but_bandwidth():
    spec = derivation.derive(hopper_like(compute_capability=(7, 5)))
    assert spec.peaks_tflops == {}
    assert "7.5" in spec.reason
    assert spec.bandwidth_tbs == pytest.approx(3.35, rel=0.002)


def test_derive_only_for_nvidia_gpus():
    assert derivation.derive(hopper_like(vendor="amd")) is None
    assert derivation.derive(DeviceFacts(kind="cpu", name="Some CPU")) is None


# ------------------------------------------------------------------------------ resolve, explain


def test_resolve_prefers_datasheet_then_derives():
    matched = specs.resolve(hopper_like(name="NVIDIA H100 80GB HBM3", max_sm_clock_mhz=1980))
    assert matched.key == "h100-sxm" and matched.origin == "datasheet"
    assert matched.peaks_tflops["bf16"] == 989.5  # the datasheet, not 132 x 1980 x 4096
    assert specs.resolve(hopper_like()).origin == "derived"


def test_cpu_resolves_to_none():
    cpu = DeviceFacts(kind="cpu", name="AMD EPYC 9654 96-Core Processor")
    assert specs.resolve(cpu) is None
    assert any("CPU" in line for line in specs.explain(cpu))


def test_explain_matched_device():
    text = "\n".join(specs.explain(hopper_like(name="NVIDIA H100 80GB HBM3")))
    for expected in ("NVIDIA H100 80GB HBM3", "h100 80gb hbm3", "H100 SXM", "^h100 80gb hbm3$",
                     "bf16 989.5", "3.35 TB/s", "nvidia.com"):
        assert expected in text


def test_explain_derived_and_underivable_devices():
    text = "\n".join(specs.explain(hopper_like()))
    assert "table entry:     none" in text and "132 SMs x 1830 MHz" in text and "bf16 989.4" in text
    amd = "\n".join(specs.explain(hopper_like(name="AMD Instinct MI999", vendor="amd")))
    assert "MFU and MBU stay empty" in amd


# ------------------------------------------------------------------------------ links (NVLink, network)


@pytest.mark.parametrize(
    "key, nvlink, network",
    [
        ("h100-sxm", 450, 50),  # NVLink 4: 900 GB/s bidirectional; one 400 Gb/s NIC per GPU
        ("h200-sxm", 450, 50),
        ("a100-sxm-80gb", 300, 25),  # NVLink 3: 600 bidirectional; 200 Gb/s HDR per GPU
        ("a100-sxm-40gb", 300, 25),
        ("b200", 900, 50),  # NVLink 5: 1800 bidirectional
        ("gb200", 900, None),
        ("h800-sxm", 200, None),
        ("h20", 450, None),
    ],
)
def test_link_figures_are_per_direction_with_their_source(key, nvlink, network):
    spec = specs.lookup(key)
    assert (spec.nvlink_gbs, spec.network_gbs) == (nvlink, network)
    assert spec.links_source and all(url.startswith("https://") for url in spec.links_source.split())


def test_parts_without_an_nvlink_switch_have_no_nvlink_figure_and_say_why():
    for key in ("h100-pcie", "h100-nvl", "h200-nvl", "a100-pcie-80gb", "a100-pcie-40gb",
                "a10", "l40s", "l40", "l4", "rtx-4090"):
        spec = specs.lookup(key)
        assert spec.nvlink_gbs is None and spec.network_gbs is None and spec.links_source == "", key
        assert "nvlink_gbs" in spec.notes, key


def test_every_link_figure_is_sourced_and_within_its_range():
    for spec in specs.table():
        if spec.nvlink_gbs is not None or spec.network_gbs is not None:
            assert spec.links_source.startswith("https://"), spec.key
        assert spec.nvlink_gbs is None or 100 <= spec.nvlink_gbs <= 900, spec.key
        assert spec.network_gbs is None or 25 <= spec.network_gbs <= 50, spec.key


LINKED_ENTRY = dict(GOOD_ENTRY, nvlink_gbs=450, network_gbs=50,
                    links_source="https://example.com/nvlink  https://example.com/nic")


def test_link_fields_parse_and_sources_are_normalised():
    spec = gpu_table.parse([LINKED_ENTRY])[0].spec
    assert (spec.nvlink_gbs, spec.network_gbs) == (450, 50)
    assert spec.links_source == "https://example.com/nvlink https://example.com/nic"
    assert spec.to_dict()["nvlink_gbs"] == 450
    bare = gpu_table.parse([GOOD_ENTRY])[0].spec
    assert (bare.nvlink_gbs, bare.network_gbs, bare.links_source) == (None, None, "")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(network_gbs=400), "network_gbs: 400 is not a plausible GB/s"),  # 400 Gb/s written as GB/s
        (dict(nvlink_gbs=3600), "nvlink_gbs: 3600 is not a plausible GB/s"),  # 450 GB/s in Gb/s
        (dict(nvlink_gbs=0.45), "nvlink_gbs: 0.45 is not a plausible GB/s"),  # TB/s
        (dict(nvlink_gbs=-1), "nvlink_gbs: must be a positive number"),
        (dict(network_gbs="50"), "network_gbs: must be a positive number"),
        (dict(links_source=None), "links_source: missing"),
        (dict(links_source="NVIDIA datasheet"), "links_source: must be URLs"),
        (dict(links_source=["https://example.com"]), "links_source: must be a string"),
        (dict(nvlink_gbs=None, network_gbs=None), "links_source: given without"),
    ],
)
def test_broken_link_fields_name_entry_and_field(changes, message):
    entry = dict(LINKED_ENTRY, **changes)
    with pytest.raises(ValueError, match=r"^gpus\.yaml entry 0 \(test-gpu\): ") as err:
        gpu_table.parse([entry])
    assert message in str(err.value)


def test_explain_shows_links_or_their_absence():
    text = "\n".join(specs.explain(hopper_like(name="NVIDIA H100 80GB HBM3")))
    assert "links:           NVLink 450 GB/s, network 50 GB/s (per GPU and direction)" in text
    assert "links source:    https://" in text
    h20 = "\n".join(specs.explain(hopper_like(name="NVIDIA H20")))
    assert "NVLink 450 GB/s, network unknown" in h20
    for unlinked in (hopper_like(name="NVIDIA L4"), hopper_like()):  # a PCIe part; a derived spec
        text = "\n".join(specs.explain(unlinked))
        assert "links:           none known" in text and "links source" not in text
