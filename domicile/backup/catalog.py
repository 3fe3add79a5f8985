"""What a backup bucket holds for a region's nodes, and whether it is sound.

`verify` downloads every object, checks its sha256 (the metadata's, and the manifest's for
snapshot parts), decodes every state and log entry and checks their checksums, and checks that
each generation's segments continue its base position without a gap. Segments may overlap: a
shipping round that failed after its upload landed (a reply lost to a timeout) is retried from
the same position with what was written since, and a shipper resuming a generation can ship
positions again; a position in several segments of one incarnation, whichever generations they
are of, must hold the same entry in each. It reports the restorable window (from the oldest
complete generation's snapshot to the newest backed-up write) and the age of the newest
backed-up write.
"""

from __future__ import annotations

import datetime
import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from domicile.backup import format as fmt
from domicile.backup.bucket import Bucket
from domicile.errors import DataCorruption, DomicileError, NotFound
from domicile.wire.records import key_state_from_bytes, mutation_from_bytes


@dataclass(frozen=True)
class Segment:
    key: str
    first_lsn: int
    last_lsn: int
    size: int


@dataclass
class Generation:
    node_id: str
    name: str
    manifest: fmt.Manifest | None
    segments: list[Segment] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def last_lsn(self) -> int:
        # Not the last segment's: one ordered after another may end before it (an overlap).
        if self.segments:
            return self.newest_segment.last_lsn
        return self.manifest.base_lsn if self.manifest else 0

    @property
    def newest_segment(self) -> Segment:
        """The segment reaching furthest (the generation has one)."""
        return max(self.segments, key=lambda s: s.last_lsn)


@dataclass
class Chain:
    """What a restore from one generation replays: its snapshot, then its segments and those of
    the later generations of the same incarnation that continue them without a hole (each later
    generation's base position within what the chain reached). Positions are one incarnation's
    change log, in HLC order, so a chain holds every write up to its last position.

    `gap` is the first run of positions it lacks before a later segment or generation of the
    incarnation (None: it runs to the incarnation's newest segment). Past a gap the chain holds
    no write, so a point from its newest write on is not covered."""

    start: Generation
    generations: list[Generation]
    segments: list[Segment]
    last_lsn: int
    gap: tuple[int, int] | None = None
    # The generation the gap is before: one of `generations` (a segment of it missing) or the
    # next one of the incarnation, whose base position the chain does not reach.
    past_gap: Generation | None = None


@dataclass
class VerifyReport:
    node_id: str
    generations: int = 0
    objects: int = 0
    bytes: int = 0
    states: int = 0
    log_entries: int = 0
    problems: list[str] = field(default_factory=list)
    window_start_ms: int = 0
    window_end_ms: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and self.generations > 0


class Catalog:
    def __init__(self, bucket: Bucket, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix

    def nodes(self) -> list[str]:
        return self.bucket.children(f"{self.prefix}nodes/")

    def generations(self, node_id: str) -> list[Generation]:
        """The node's generations, oldest first, each with its manifest (None while incomplete)
        and its segments in position order (by first position, then last: of two overlapping
        segments that start together the shorter comes first)."""
        out: dict[str, Generation] = {}
        base = fmt.node_prefix(self.prefix, node_id)
        manifests: list[str] = []
        for obj in self.bucket.objects(base):
            rest = obj.key[len(base) :].split("/")
            if not fmt.GENERATION_PATTERN.fullmatch(rest[0]):
                continue
            generation = out.setdefault(rest[0], Generation(node_id, rest[0], None))
            generation.objects += 1
            generation.bytes += obj.size
            if rest[1:] == [fmt.MANIFEST]:
                manifests.append(rest[0])
            elif len(rest) == 3 and rest[1] == fmt.SEGMENTS_DIR:
                span = fmt.parse_segment_name(rest[2])
                if span is not None:
                    generation.segments.append(Segment(obj.key, span[0], span[1], obj.size))
        for name in manifests:
            body, _ = self.bucket.get(fmt.manifest_key(self.prefix, node_id, name))
            try:
                out[name].manifest = fmt.Manifest.from_json(body)
            except (ValueError, TypeError, KeyError) as error:
                raise DataCorruption(
                    f"manifest of backup generation {name} cannot be read: {error}"
                ) from None
        for generation in out.values():
            generation.segments.sort(key=lambda s: (s.first_lsn, s.last_lsn))
        return [out[name] for name in sorted(out)]

    def newest_write_ms(self, generation: Generation) -> int:
        """Wall time of the newest write the generation holds (its snapshot's end when no segment)."""
        if generation.segments:
            meta = self.bucket.head(generation.newest_segment.key)
            return int(meta.get(fmt.META_NEWEST_MS, "0"))
        return generation.manifest.finished_ms if generation.manifest else 0

    def chain(self, generations: Sequence[Generation], start: Generation) -> Chain:
        """The chain a restore from `start` replays (generations: the node's, oldest first)."""
        assert start.manifest is not None
        chain = Chain(start, [], [], start.manifest.base_lsn)
        if not self._extend(chain, start):
            return chain
        later = [g for g in generations if g.name > start.name and g.manifest is not None]
        for g in later:
            assert g.manifest is not None
            if g.manifest.epoch != start.manifest.epoch:
                break  # another incarnation: its positions are another log's
            if g.manifest.base_lsn > chain.last_lsn:
                chain.gap, chain.past_gap = (chain.last_lsn + 1, g.manifest.base_lsn), g
                break
            if not self._extend(chain, g):
                break
        return chain

    def _chains(self, generations: Sequence[Generation]) -> Iterator[tuple[Generation, Chain, set[str]]]:
        """Each chain of complete generations once, from its oldest generation, with the names of
        the generations in it and in the chains before it."""
        covered: set[str] = set()
        for g in generations:
            if g.manifest is None or g.name in covered:
                continue
            chain = self.chain(generations, g)
            covered.update(c.name for c in chain.generations)
            yield g, chain, covered

    @staticmethod
    def _extend(chain: Chain, generation: Generation) -> bool:
        """Adds the generation's segments past the chain's base; False at a gap. A later
        generation's copies of positions the chain already holds are added too (a new
        generation ships its own from its base before its manifest): the replay reads each
        position once and compares every copy of the positions it takes."""
        chain.generations.append(generation)
        assert chain.start.manifest is not None
        base = chain.start.manifest.base_lsn
        for segment in generation.segments:
            if segment.last_lsn <= base or (generation is chain.start and segment.last_lsn <= chain.last_lsn):
                continue
            if segment.first_lsn > chain.last_lsn + 1:
                chain.gap, chain.past_gap = (chain.last_lsn + 1, segment.first_lsn - 1), generation
                return False
            chain.segments.append(segment)
            chain.last_lsn = max(chain.last_lsn, segment.last_lsn)
        return True

    def chain_end_ms(self, chain: Chain) -> int:
        """Wall time of the newest write the chain holds (its snapshot's end when no segment)."""
        if chain.segments:
            meta = self.bucket.head(chain.segments[-1].key)
            return int(meta.get(fmt.META_NEWEST_MS, "0"))
        assert chain.start.manifest is not None
        return chain.start.manifest.finished_ms

    def restorable(self, generations: Sequence[Generation]) -> list[tuple[int, int | None]]:
        """The ranges of points a restore covers, oldest first: from a generation's snapshot end
        to the newest write of its chain, or (None) on without end when no gap stops the chain
        (past the newest backed-up write a restore gives that write's state)."""
        ranges: list[tuple[int, int | None]] = []
        for g, chain, _ in self._chains(generations):
            assert g.manifest is not None
            end = self.chain_end_ms(chain) if chain.gap is not None else None
            if ranges and ranges[-1][1] is None:
                # The previous chain ran on (another incarnation's followed): it covers up to here.
                ranges[-1] = (ranges[-1][0], g.manifest.finished_ms)
            ranges.append((g.manifest.finished_ms, end))
        return ranges

    def expired(self, node_id: str, horizon_ms: int, keep: str) -> list[str]:
        """Generations not needed to restore any point after horizon_ms: every generation older
        than the newest complete one whose snapshot finished at or before the horizon."""
        generations = self.generations(node_id)
        anchor = ""
        for g in generations:
            if g.manifest is not None and g.manifest.finished_ms <= horizon_ms:
                anchor = g.name
        return [g.name for g in generations if g.name < anchor and g.name != keep]

    def delete(self, node_id: str, generation: str) -> int:
        # The manifest first: a generation half deleted is then incomplete, never used.
        manifest = fmt.manifest_key(self.prefix, node_id, generation)
        self.bucket.delete_prefix(manifest)
        return self.bucket.delete_prefix(fmt.generation_prefix(self.prefix, node_id, generation))

    # -- reading bodies --------------------------------------------------------------------------

    def snapshot_rows(self, manifest: fmt.Manifest) -> Iterator[tuple[str, str, bytes]]:
        for part in manifest.parts:
            body, _ = self.bucket.get(part.key, part.sha256)
            yield from fmt.read_snapshot_rows(body)

    def log_entries(self, segment: Segment) -> list[tuple[int, bytes]]:
        body, _ = self.bucket.get(segment.key)
        entries = list(fmt.read_log_entries(body))
        positions = [lsn for lsn, _ in entries]
        if positions != list(range(segment.first_lsn, segment.last_lsn + 1)):
            raise DataCorruption(
                f"segment {segment.key} should hold positions {segment.first_lsn}..{segment.last_lsn}; "
                "it holds others"
            )
        return entries

    # -- verify --------------------------------------------------------------------------------

    def verify(self, node_id: str, progress: Callable[[str], None] = lambda _: None) -> VerifyReport:
        report = VerifyReport(node_id)
        generations = self.generations(node_id)
        if not generations:
            raise NotFound(f"no backup of node {node_id} in bucket {self.bucket.name}")
        for g in generations:
            if g.manifest is None:
                # A generation whose snapshot is still going up (or was cut short): not usable.
                progress(f"{g.name}: incomplete (no manifest), not restorable")
                continue
            report.generations += 1
            self._verify_generation(g, report)
            progress(f"{g.name}: checked {1 + len(g.manifest.parts)} snapshot objects")
            if not report.window_start_ms:
                report.window_start_ms = g.manifest.finished_ms
        complete = [g for g in generations if g.manifest is not None]
        for incarnation in _incarnations(complete):
            self._verify_segments(incarnation, report)
            segments = sum(len(g.segments) for g in incarnation)
            progress(f"{incarnation[0].name}..{incarnation[-1].name}: checked {segments} log segments")
        self._verify_chains(generations, report)
        if complete:
            newest = complete[-1]
            report.window_end_ms = max(self.newest_write_ms(newest), newest.manifest.finished_ms)  # type: ignore[union-attr]
        return report

    def _verify_chains(self, generations: Sequence[Generation], report: VerifyReport) -> None:
        """A generation whose base position is past what the segments before it (of the same
        incarnation) hold leaves a hole in the window: a restore to a point between the newest
        write before the hole and that generation's snapshot end is refused. (A hole inside a
        generation's segments is reported with them.)"""
        for _, chain, covered in self._chains(generations):
            past = chain.past_gap
            if chain.gap is None or past is None or past.name in covered or past.manifest is None:
                continue
            first, last = chain.gap
            report.problems.append(
                f"{past.name}: positions {first}..{last} before its base position are in no segment: "
                f"no point from {_when(self.chain_end_ms(chain))} to {_when(past.manifest.finished_ms)} "
                "can be restored"
            )

    def _verify_generation(self, g: Generation, report: VerifyReport) -> None:
        """The snapshot, state by state, and the generation's segments as spans: that they
        continue its base position without a hole (overlapping or not: a position already held
        is no hole). Their entries are checked per incarnation (_verify_segments)."""
        assert g.manifest is not None
        report.objects += 1 + len(g.manifest.parts) + len(g.segments)
        report.bytes += g.bytes
        for part in g.manifest.parts:
            try:
                body, _ = self.bucket.get(part.key, part.sha256)
                for _, _, state in fmt.read_snapshot_rows(body):
                    decoded = key_state_from_bytes(state)
                    if not all(v.checksum_ok() for v in decoded.versions):
                        raise DataCorruption(f"a state in {part.key} fails its checksum")
                    report.states += 1
            except (DomicileError, ValueError) as error:
                report.problems.append(f"{g.name}: snapshot part {part.key}: {error}")
        reached = g.manifest.base_lsn
        for segment in g.segments:
            if segment.first_lsn > reached + 1:
                report.problems.append(
                    f"{g.name}: positions {reached + 1}..{segment.first_lsn - 1} are missing "
                    f"(segment {segment.key} starts at {segment.first_lsn})"
                )
            reached = max(reached, segment.last_lsn)

    def _verify_segments(self, incarnation: Sequence[Generation], report: VerifyReport) -> None:
        """Checks every log entry of one incarnation's generations, and that a position held by
        more than one segment holds the same entry in each, whichever generations they are of:
        they are copies of one change log. A restore compares the copies of the chain it
        replays, which is never more than these, so a bucket that verifies is never refused by a
        restore for two copies that differ. Each position counts once in report.log_entries."""
        owner = {s.key: g.name for g in incarnation for s in g.segments}
        segments = sorted(
            (s for g in incarnation for s in g.segments), key=lambda s: (s.first_lsn, s.last_lsn)
        )
        same = SameEntries(segments)
        reached = incarnation[0].manifest.base_lsn if incarnation[0].manifest else 0
        for index, segment in enumerate(segments):
            try:
                entries = self.log_entries(segment)
                for lsn, blob in entries:
                    mutation = mutation_from_bytes(blob)
                    if not mutation.version.checksum_ok():
                        raise DataCorruption(f"a log entry in {segment.key} fails its checksum")
                    if lsn > reached:
                        report.log_entries += 1
                same.check(index, entries)
            except SegmentsDisagree as error:
                report.problems.append(f"{owner[segment.key]}: {error.message}")
            except (DomicileError, ValueError) as error:
                report.problems.append(f"{owner[segment.key]}: segment {segment.key}: {error}")
            reached = max(reached, segment.last_lsn)


class SegmentsDisagree(DataCorruption):
    """Two segments hold different entries at one position."""


class SameEntries:
    """Checks that a position held by more than one segment holds the same entry in each. Such
    segments are copies of one change log (a retried upload whose first attempt landed, a
    shipper resuming a generation, a generation's segments and the next one's after its base),
    so different bytes mean one copy is damaged, or the log was rewound under one incarnation
    without the rewind check noticing and wrote the position again; which entry belongs there
    cannot be told. Fed each segment's entries in the order of `segments` (a chain's order: by
    generation, then by first position, so a later segment may start before an earlier one);
    keeps a digest only of the positions a later segment starts at or before."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self._segments = list(segments)
        # Per segment: the lowest first position of the segments after it.
        self._later_first: list[int] = []
        lowest = sys.maxsize
        for segment in reversed(self._segments):
            self._later_first.append(lowest)
            lowest = min(lowest, segment.first_lsn)
        self._later_first.reverse()
        self._held: dict[int, tuple[bytes, str]] = {}

    def lowest_first(self, index: int) -> int:
        """The lowest first position of the segments from `index` on."""
        return min(self._segments[index].first_lsn, self._later_first[index])

    def check(self, index: int, entries: Iterable[tuple[int, bytes]]) -> None:
        """Raises SegmentsDisagree naming both segments at the first position they disagree on."""
        key, keep_from = self._segments[index].key, self._later_first[index]
        for lsn, blob in entries:
            held = self._held.get(lsn)
            if held is None and lsn < keep_from:
                continue  # in no other segment
            digest = hashlib.sha256(blob).digest()
            if held is None:
                self._held[lsn] = (digest, key)
            elif held[0] != digest:
                raise SegmentsDisagree(
                    f"segments {held[1]} and {key} both hold log position {lsn} but with different "
                    "entries: either one copy is damaged, or the node's store was put back from an "
                    "older copy under the same incarnation without the rewind check noticing (see "
                    "README, Backups and restore: a store copied back by hand); which entry belongs "
                    "at the position cannot be told, so no restore replays them"
                )
        if self._held:
            # The segments after this one start at keep_from or later.
            self._held = {lsn: held for lsn, held in self._held.items() if lsn >= keep_from}


def _incarnations(complete: Sequence[Generation]) -> list[list[Generation]]:
    """Complete generations (oldest first) in runs of one incarnation (one change log)."""
    runs: list[list[Generation]] = []
    for g in complete:
        assert g.manifest is not None
        if runs and runs[-1][-1].manifest.epoch == g.manifest.epoch:  # type: ignore[union-attr]
            runs[-1].append(g)
        else:
            runs.append([g])
    return runs


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")
