"""Bundles between unit and case, end to end over the real protocols: the bundler's station (its
camera frame of the bundle's unit codes, its PLC, its label printer and label camera) forms
bundles; the case station behind it reads the bundle labels in each case and packs a case of
bundles. Physical truth from the simulators, decisions from the ledger."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import gs1
from edge_agent.aggregation.hierarchy import ContainerState, Hierarchy
from edge_agent.aggregation.matching import CaseReason
from edge_agent.aggregation.runner import case_reader, device, label_reader
from edge_agent.aggregation.station import BundleStation, CaseStation, LabelPath, StationTimings
from edge_agent.config.models import VisionSection
from edge_agent.gs1.check import gtin_check_digit
from simulators.aggregation.case_packer import CaseDefect
from simulators.aggregation.label import label_code
from simulators.aggregation.station import BundleStationSim, CaseStationSim, SimBundle
from tests.helpers.aggregation import GTIN, aggregation_db, order_spec, plan
from tests.helpers.waiting import bounded, until
from tests.test_aggregation_station import running, sim_units

pytestmark = pytest.mark.usefixtures("no_leaks")

BUNDLE, CASE = 3, 2
SIZE = (1280, 960)
TIMINGS = StationTimings(closing_read_s=3.0, label_confirm_s=5.0, label_read_s=3.0)


@contextlib.asynccontextmanager
async def station(
    kind: type[CaseStation], hierarchy: Hierarchy, order_id: str, sim: CaseStationSim
) -> AsyncIterator[CaseStation]:
    configs = sim.driver_configs()
    async with contextlib.AsyncExitStack() as stack:
        devices: dict[str, Any] = {}
        for key, kind_name in (
            ("camera", "camera"),
            ("plc", "plc"),
            ("label_printer", "label_printer"),
            ("label_camera", "camera"),
        ):
            devices[key] = await stack.enter_async_context(
                device(kind_name, configs[key], f"{kind.level}.{key}")  # type: ignore[arg-type]
            )
        vision = VisionSection()
        labels = LabelPath(
            devices["label_printer"], devices["label_camera"], label_reader(vision), TIMINGS
        )
        yield kind(
            hierarchy,
            order_id,
            camera=devices["camera"],
            plc=devices["plc"],
            labels=labels,
            reader=case_reader(vision),
            timings=TIMINGS,
        )


@bounded(150)
async def test_units_are_bundled_and_bundles_cased_each_with_a_verified_label(
    tmp_path: Path,
) -> None:
    units = BUNDLE * 6
    with aggregation_db(tmp_path / "state") as setup:
        spec = order_spec(quantity=units, aggregation=plan(bundle=BUNDLE, case=CASE, pallet=None))
        batch = setup.add_order(spec)
        made = sim_units(setup, setup.units(batch, units), batch.lot, batch.expiry)
        h = setup.hierarchy
        kw: dict[str, Any] = {"size": SIZE, "gate_delay_s": 4.0, "closing_after_s": 0.1}
        bundler = BundleStationSim(case_size=BUNDLE, cases_per_min=90, seed=3, **kw)
        packer = CaseStationSim(case_size=CASE, cases_per_min=90, seed=4, **kw)
        bundler.feed(packer)
        # bundle 2 carries a foreign unit; case 2 a bundle label twice
        bundler.packer.force(None, CaseDefect.FOREIGN_CODE)
        packer.packer.force(None, CaseDefect.DUPLICATE)
        await bundler.start()
        await packer.start()
        try:
            async with (
                station(BundleStation, h, batch.id, bundler) as bundles,
                station(CaseStation, h, batch.id, packer) as cases,
                running(bundles),
                running(cases),
            ):
                bundler.packer.put(made)
                formed = bundler.packer.cases
                await until(
                    lambda: len(formed) == 6 and all(b.verdict is not None for b in formed),
                    "every bundle at its gate",
                    within=60,
                )
                boxed = packer.packer.cases
                await until(
                    lambda: len(boxed) == 2 and all(c.verdict is not None for c in boxed),
                    "both cases at their gate",
                    within=60,
                )
                await until(lambda: not bundles._pending and not cases._pending, "followed")
        finally:
            await packer.stop()
            await bundler.stop()

        assert [b.verdict for b in formed] == [True, False, True, True, True, True]
        assert bundles.stats.cases_rejected == {CaseReason.FOREIGN: 1}
        assert [c.verdict for c in boxed] == [True, False]
        assert cases.stats.cases_rejected == {CaseReason.DUPLICATE: 1}

        # every bundle that passed is closed in the ledger with exactly the units in it
        closed_bundles = {
            b.code: b
            for b in h.containers(batch.id, level="bundle", states=[ContainerState.CLOSED])
        }
        passed = [b for b in formed if b.verdict]
        assert {label_code(b.labels[-1]) for b in passed} == set(closed_bundles)
        for sim_bundle in passed:
            code = label_code(sim_bundle.labels[-1])
            assert code is not None
            held = {h.item(epc).serial for epc in h.children(closed_bundles[code].epc)}
            assert held == sim_bundle.serials()
            label = dict(gs1.parse(sim_bundle.labels[-1], check_requisites=False).ais)
            assert (label["02"], label["37"]) == (GTIN, str(BUNDLE))
        # the rejected bundle's units are in no bundle
        for unit in formed[1].inside:
            if not unit.serial.startswith("FOREIGN"):
                assert h.parent_of(setup.ledger.epc(unit.gtin, unit.serial)) is None

        # the case that passed holds exactly the two bundles physically in it
        (case,) = h.containers(batch.id, level="case", states=[ContainerState.CLOSED])
        good = boxed[0]
        assert label_code(good.labels[-1]) == case.code
        inside = [b for b in good.inside if isinstance(b, SimBundle)]
        assert {h.container(epc).code for epc in h.children(case.epc)} == {b.serial for b in inside}
        assert len(inside) == CASE
        label = dict(gs1.parse(good.labels[-1], check_requisites=False).ais)
        assert (label["02"], label["37"]) == (GTIN, str(CASE * BUNDLE))  # units, inside bundles
        # the rejected case's bundles stay closed, in no case, loose for rework
        loose = h.loose(batch.id)
        for sim_bundle in boxed[1].inside:
            bundle = h.container(sim_bundle.serial)
            assert bundle.state == ContainerState.CLOSED and bundle.parent is None
            assert loose.get(bundle.epc) == "case_rejected"


def test_a_label_counts_the_trade_items_inside(tmp_path: Path) -> None:
    """AI 02 + 37 name the trade items a container holds: units; bundles of their own GTIN
    (each a trade item); or, for SSCC bundles, the units in them. A case of its own GTIN carries
    that GTIN and its serial instead."""
    bundle_gtin = "2950600013435" + str(gtin_check_digit("2950600013435"))
    levels = {
        "sscc": {"level": "bundle", "capacity": 2},
        "gtin_serial": {"level": "bundle", "capacity": 2, "identifier": "gtin_serial",
                        "gtin": bundle_gtin},
    }  # fmt: skip
    expected = {"sscc": (GTIN, 4), "gtin_serial": (bundle_gtin, 2)}
    for kind, bundle_level in levels.items():
        with aggregation_db(tmp_path / kind) as setup:
            aggregation = {"levels": [bundle_level, {"level": "case", "capacity": 2}]}
            batch = setup.add_order(order_spec(quantity=4, aggregation=aggregation))
            units = setup.units(batch, 4)
            h = setup.hierarchy
            bundles = []
            for pair in (units[:2], units[2:]):
                bundle = h.open_container(batch.id, "bundle")
                bundles.append(h.pack(bundle.epc, pair, close=True))
            case_station = CaseStation(h, batch.id, camera=None, plc=None, labels=None,  # type: ignore[arg-type]
                                       reader=None)  # fmt: skip
            case = h.open_container(batch.id, "case")
            label = case_station._label_of(case, [b.epc for b in bundles])
            assert (label["gtin"], label["count"]) == expected[kind], kind
            assert label["sscc"] == case.code and "serial" not in label
            bundler = BundleStation(h, batch.id, camera=None, plc=None, labels=None,  # type: ignore[arg-type]
                                    reader=None)  # fmt: skip
            own = bundler._label_of(bundles[0], units[:2])
            if kind == "gtin_serial":  # the bundle's own GTIN + serial
                assert (own["sscc"], own["gtin"], own["serial"]) == (
                    "",
                    bundle_gtin,
                    bundles[0].serial,
                )
            else:
                assert (own["sscc"], own["gtin"], own["count"]) == (bundles[0].code, GTIN, 2)
