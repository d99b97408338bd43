"""collate's allocation helpers: huge-page advice on fresh batch memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from streamnodes.collate import advise_huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_a_range_without_a_whole_aligned_huge_page_is_not_advised() -> None:
    storage = torch.UntypedStorage(1 << 20)  # 1 MiB: no 2 MiB-aligned page fits
    assert advise_huge_pages(storage.data_ptr(), storage.nbytes()) is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists(), reason="Linux transparent huge pages only")
def test_a_fresh_batch_allocation_is_advised_where_the_kernel_allows_it() -> None:
    mode = THP.read_text().split("[", 1)[1].split("]", 1)[0]  # "always [madvise] never" -> "madvise"
    storage = torch.UntypedStorage(16 << 20)
    assert advise_huge_pages(storage.data_ptr(), storage.nbytes()) is (mode != "never")
    view = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))
    view.fill_(7)  # the memory stays ordinary memory: written and read as before
    assert int(view.sum()) == 7 * storage.nbytes()
