"""What a backup bucket holds for a region's nodes, and whether it is sound.

`verify` downloads every object, checks its sha256 (the metadata's, and the manifest's for
snapshot parts), decodes every state and log entry and checks their checksums, and checks that
each generation's segments continue its base position without a gap. It reports the restorable
window (from the oldest complete generation's snapshot to the newest backed-up write) and the
age of the newest backed-up write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
        if self.segments:
            return self.segments[-1].last_lsn
        return self.manifest.base_lsn if self.manifest else 0


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
        and its segments in position order."""
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
            generation.segments.sort(key=lambda s: s.first_lsn)
        return [out[name] for name in sorted(out)]

    def newest_write_ms(self, generation: Generation) -> int:
        """Wall time of the newest write the generation holds (its snapshot's end when no segment)."""
        if generation.segments:
            meta = self.bucket.head(generation.segments[-1].key)
            return int(meta.get(fmt.META_NEWEST_MS, "0"))
        return generation.manifest.finished_ms if generation.manifest else 0

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
            progress(f"{g.name}: checked {g.objects} objects")
            if not report.window_start_ms:
                report.window_start_ms = g.manifest.finished_ms
        complete = [g for g in generations if g.manifest is not None]
        if complete:
            newest = complete[-1]
            report.window_end_ms = max(self.newest_write_ms(newest), newest.manifest.finished_ms)  # type: ignore[union-attr]
        return report

    def _verify_generation(self, g: Generation, report: VerifyReport) -> None:
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
        expected = g.manifest.base_lsn + 1
        for segment in g.segments:
            if segment.first_lsn != expected:
                report.problems.append(
                    f"{g.name}: positions {expected}..{segment.first_lsn - 1} are missing "
                    f"(segment {segment.key} starts at {segment.first_lsn})"
                )
            expected = segment.last_lsn + 1
            try:
                for _, blob in self.log_entries(segment):
                    mutation = mutation_from_bytes(blob)
                    if not mutation.version.checksum_ok():
                        raise DataCorruption(f"a log entry in {segment.key} fails its checksum")
                    report.log_entries += 1
            except (DomicileError, ValueError) as error:
                report.problems.append(f"{g.name}: segment {segment.key}: {error}")
