"""The huge-page tunable's environment handling (pinn_ng/pipeline/hugepages.py)."""

from pinn_ng.pipeline import hugepages


def test_environment_keeps_other_tunables_and_is_idempotent():
    env = hugepages.environ_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hugepages.active(env)
    assert hugepages.environ_with_huge_pages(env) == env
    assert hugepages.environ_with_huge_pages({})["GLIBC_TUNABLES"] == hugepages.TUNABLE
    assert not hugepages.active({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})


def test_thp_mode_and_opt_out(tmp_path):
    for text, mode in (("always [madvise] never\n", "madvise"), ("[never] madvise\n", "never")):
        path = tmp_path / "enabled"
        path.write_text(text)
        assert hugepages.thp_mode(str(path)) == mode
    assert hugepages.thp_mode(str(tmp_path / "missing")) is None
    assert not hugepages.wanted({"PINN_NG_HUGE_PAGES": "0"})
    assert not hugepages.wanted({"GLIBC_TUNABLES": hugepages.TUNABLE})
