"""Site names: parsing, printing, range checks and one-line errors (interp.sites)."""

import pytest

from interp import InterpError, Site, parse_site
from interp.sites import ALL_KINDS, LAYER_KINDS, READ_ONLY_KINDS

ALL_SITE_NAMES = [f"{kind}.{layer}" for kind in LAYER_KINDS for layer in (0, 3, 29)] + [
    f"norm_scale.{layer}.{norm}" for layer in (0, 3, 29) for norm in ("ln1", "ln2")
] + ["norm_scale.final"]


@pytest.mark.parametrize("name", ALL_SITE_NAMES)
def test_round_trip(name):
    site = parse_site(name)
    assert str(site) == name
    assert parse_site(str(site)) == site
    assert parse_site(site) is site  # a Site passes through
    assert parse_site(name, n_layers=30) == site
    assert hash(site) == hash(parse_site(name))  # usable as a dict key


def test_fields():
    assert parse_site("head_out.5") == Site("head_out", 5, None)
    assert parse_site("norm_scale.2.ln1") == Site("norm_scale", 2, "ln1")
    assert parse_site("norm_scale.7.ln2") == Site("norm_scale", 7, "ln2")
    assert parse_site("norm_scale.final") == Site("norm_scale", None, "final")
    assert parse_site("resid_pre.12").layer == 12
    assert parse_site("resid_pre.007") == Site("resid_pre", 7)  # leading zeros are the same layer
    assert parse_site("k.3") == Site("k", 3) and parse_site("q.0").writable and parse_site("v.2").writable


def test_every_kind_is_in_the_module_table():
    import re

    import interp.sites

    for kind in ALL_KINDS:
        assert re.search(rf"^{kind}\.(L|final)", interp.sites.__doc__, re.M), kind


def test_kinds_and_writability():
    assert set(ALL_KINDS) == set(LAYER_KINDS) | {"norm_scale"}
    assert set(READ_ONLY_KINDS) == {"attn_pattern", "norm_scale", "router_logits", "expert_out"}
    for kind in LAYER_KINDS:
        assert parse_site(f"{kind}.0").writable == (kind not in ("attn_pattern", "router_logits", "expert_out"))
    assert not parse_site("norm_scale.0.ln1").writable
    assert not parse_site("norm_scale.final").writable


@pytest.mark.parametrize(
    "name",
    ["resid.0", "resid", "", "Resid_pre.0", " resid_pre.0", "hook_resid_pre.0", "blocks.0.hook_resid_pre", "final"],
)
def test_unknown_kind_names_the_valid_kinds(name):
    with pytest.raises(InterpError, match="unknown site") as err:
        parse_site(name)
    message = str(err.value)
    assert "\n" not in message
    for kind in ALL_KINDS:
        assert kind in message


@pytest.mark.parametrize(
    "name",
    ["resid_pre", "resid_pre.", "resid_pre.x", "resid_pre.-1", "resid_pre.1.2", "resid_pre.1.ln1", "head_out.1.5",
     "mlp_act. 1", "attn_out.1e2", "resid_post.+1"],
)
def test_bad_layer_part(name):
    with pytest.raises(InterpError, match=r"bad site .*use <kind>\.<layer>") as err:
        parse_site(name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name",
    ["norm_scale", "norm_scale.1", "norm_scale.1.ln3", "norm_scale.x.ln1", "norm_scale.final.x", "norm_scale.ln1.1",
     "norm_scale..ln1", "norm_scale.1.ln1.x", "norm_scale.-1.ln1", "norm_scale.Final"],
)
def test_bad_norm_scale(name):
    with pytest.raises(InterpError, match=r"bad site .*norm_scale\.<layer>\.ln1.*norm_scale\.final"):
        parse_site(name)


def test_non_ascii_digits_are_bad_sites():
    """str.isdigit accepts '²', which int() then rejects: the error must still be an InterpError."""
    for name in ("resid_pre.²", "norm_scale.².ln1"):
        with pytest.raises(InterpError, match="bad site"):
            parse_site(name)


@pytest.mark.parametrize("name", ["resid_pre.30", "attn_pattern.99", "norm_scale.30.ln2", "mlp_act.100"])
def test_out_of_range_names_the_range(name):
    with pytest.raises(InterpError, match=r"out of range: this model has layers 0\.\.29"):
        parse_site(name, n_layers=30)
    parse_site(name)  # without n_layers there is no range to check


def test_range_edges_and_site_objects_are_checked_too():
    assert parse_site("resid_post.29", n_layers=30).layer == 29
    assert parse_site("norm_scale.final", n_layers=1) == Site("norm_scale", None, "final")
    with pytest.raises(InterpError, match=r"layers 0\.\.1"):
        parse_site(Site("resid_pre", 2), n_layers=2)
    with pytest.raises(InterpError, match=r"layers 0\.\.0"):
        parse_site("norm_scale.1.ln1", n_layers=1)
