"""The command line and the one composition root: builds settings, engine, HTTP session and pools and
hands them down. ``run.py`` and the ``aggregator`` console script call ``main()``.

Exit codes: 0 ok; 1 some sources failed (fetch) or a runtime error; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aggregator import __version__, store, websub
from aggregator.config import Settings, load_config
from aggregator.errors import AggregatorError, ConfigError, StoreError
from aggregator.fetch import HostLimits, fetch, make_session
from aggregator.model import PollOutcome, SourceHealth, StoredItem
from aggregator.pipeline import (
    UNCHANGED_BATCH,
    Context,
    backfill_topics,
    flush_unchanged,
    poll_source,
    topic_definitions,
)
from aggregator.stages import Stages, limit_malloc_arenas
from aggregator.topics import MatchDoc, compile_query

if TYPE_CHECKING:
    from flask import Flask

    from aggregator.opml import ImportPlan
    from aggregator.worker import Worker

DEFAULT_CONFIG = "config/aggregator.yaml"
log = logging.getLogger("aggregator")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    """What the commands share once the config is loaded and the store is open."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    ctx: Context


def load(args: argparse.Namespace) -> Settings:
    path = args.config or os.environ.get("AGGREGATOR_CONFIG") or DEFAULT_CONFIG
    return load_config(path, validate_query=compile_query)


def open_app(settings: Settings, *, migrate: bool = True) -> App:
    """Open the store (migrating it, or checking it is migrated), sync sources and topics."""
    engine = open_engine(settings)
    if migrate:
        store.upgrade(engine)
    else:
        store.ensure_current(engine, f"python run.py db upgrade --config {settings.path}")
    sessions = store.make_sessionmaker(engine)
    http = make_session(pool_size=max(10, settings.worker.threads))
    limits = HostLimits(settings.worker.per_host, host_retry_after=settings.worker.host_retry_after)
    writers = 1 if engine.dialect.name == "sqlite" else settings.worker.threads  # SQLite: one writer
    limit_malloc_arenas()  # before the polling threads start: their arenas would keep ~50 MB idle
    ctx = Context.build(
        settings.sources,
        settings.topics,
        sessions,
        partial(fetch, http, limits=limits),
        on_topics_changed=_pinger(settings),
        stages=Stages.build(processes=settings.worker.parse_processes, writers=writers),
        unchanged_batch=UNCHANGED_BATCH,  # the worker and poll_many write what is left
    )
    if migrate:
        with sessions.begin() as s:
            store.sync_sources(s, settings.sources, now())
            stale = store.sync_topics(s, topic_definitions(settings.topics, settings.sources))
        if stale:
            matched = backfill_topics(ctx, stale, now())
            log.info("topics %s computed from stored items: %d matches", ", ".join(stale), matched)
    return App(settings, engine, sessions, ctx)


def _pinger(settings: Settings) -> Callable[[Sequence[str]], None] | None:
    """With ``websub.hub`` set: a callback that pings the hub for every feed of the changed topics."""
    hub = settings.websub_hub
    if not hub:
        return None

    def ping(names: Sequence[str]) -> None:
        from aggregator import publish  # feedgen: loaded by the first ping, not by every worker

        base = settings.server.base_url
        urls = [url for name in names for url in publish.topic_feed_urls(base, name).values()]
        websub.ping_later(hub, urls, settle=publish.REVALIDATE)  # once every server serves the change

    return ping


def open_engine(settings: Settings) -> Engine:
    """The store's engine; a ``database:`` URL that cannot be used is a configuration error (exit 2)."""
    try:
        pool = settings.database_pool
        limits = store.Pool(pool.size, pool.overflow, pool.timeout, pool.sqlite_cache, pool.sqlite_mmap)
        return store.make_engine(settings.database, limits)
    except StoreError as e:
        raise ConfigError(f"{settings.path}: database: {e}") from e


# --- commands ------------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace, out: Console) -> int:
    settings = load(args)
    out.print(
        f"{settings.path}: OK: {len(settings.sources)} sources, {len(settings.topics)} topics, "
        f"database {settings.database}"
    )
    return 0


def cmd_fetch(args: argparse.Namespace, out: Console) -> int:
    app = open_app(load(args))
    known = app.ctx.sources
    owner = store.new_owner("fetch")
    lease = timedelta(seconds=app.settings.worker.lease)
    busy: dict[str, datetime] = {}
    if args.source or args.all:
        if args.source:
            unknown = [n for n in args.source if n not in known]
            if unknown:
                raise ConfigError(f"unknown source(s): {', '.join(unknown)} (see `python run.py sources`)")
            wanted = list(dict.fromkeys(args.source))
        else:  # every enabled source except the retired (410 Gone); --source NAME still polls one
            with app.sessions() as s:
                retired = {h.name for h in store.source_health(s) if h.retired}
            wanted = [n for n, s in known.items() if s.enabled and n not in retired]
        # leased like a worker's claim, so a worker running beside this command never polls them at once
        with app.sessions.begin() as s:
            names, busy = store.lease_sources(s, wanted, now(), lease=lease, owner=owner)
        for name, until in busy.items():
            out.print(f"{name}: skipped, a worker is polling it now (its lease ends {until:%H:%M:%S} UTC)")
    else:
        with app.sessions.begin() as s:
            names = store.claim_due_sources(s, now(), lease=lease, limit=len(known) or 1, owner=owner)
    if not names:
        if not busy:
            out.print("no source is due yet (see `python run.py sources`); `fetch --all` polls every source")
        return 0
    outcomes = poll_many(app, names, out)
    with app.sessions.begin() as s:  # a poll that could not record its outcome: due again at once
        store.release_leases(s, owner)
    out.print(outcome_table(outcomes))
    failed = [o for o in outcomes if not o.ok]
    new = sum(o.new for o in outcomes)
    out.print(f"{len(outcomes)} sources polled, {new} new items, {len(failed)} failed")
    return 1 if failed else 0


def poll_many(app: App, names: Sequence[str], out: Console) -> list[PollOutcome]:
    threads = max(1, min(app.settings.worker.threads, len(names) or 1))
    outcomes: list[PollOutcome] = []
    with (
        ThreadPoolExecutor(max_workers=threads) as pool,
        Progress(console=out, transient=True, disable=not out.is_terminal) as progress,
    ):
        task = progress.add_task("polling", total=len(names))
        for outcome in pool.map(lambda n: poll_source(app.ctx, n, now()), names):
            outcomes.append(outcome)
            progress.advance(task)
    flush_unchanged(app.ctx)  # the unchanged polls still held (a batch not full yet)
    return outcomes


def outcome_table(outcomes: Sequence[PollOutcome]) -> Table:
    table = Table(title="Poll results")
    for column in ("source", "status", "HTTP", "entries", "new", "updated", "seconds", "error / problem"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        table.add_row(
            o.source,
            o.status if o.ok else "[red]error[/red]",
            str(o.http_status or ""),
            str(o.entries),
            str(o.new),
            str(o.updated),
            f"{o.duration:.2f}",
            escape(o.error or o.problem or ""),
        )
    return table


def cmd_sources(args: argparse.Namespace, out: Console) -> int:
    app = open_app(load(args))
    if args.history is not None:
        return source_history(app, args.history, out)
    with app.sessions() as s:
        rows = store.source_health(s)
    table = Table(title=f"Sources ({app.settings.path})")
    for column in ("source", "status", "last fetch", "HTTP", "items", "new / in feed", "errors"):
        table.add_column(column, overflow="fold")
    table.add_column("next due (why)", overflow="fold", min_width=19)
    table.add_column("url / error", overflow="fold")
    for h in rows:
        table.add_row(
            h.name,
            h.status,
            when(h.last_fetch),
            str(h.last_http_status or ""),
            str(h.items),
            f"{h.last_new} / {h.last_entries}",
            str(h.error_count),
            "-" if h.retired else when(h.next_due) + (f"\n({escape(h.due_reason)})" if h.due_reason else ""),
            source_detail(h),
        )
    out.print(table)
    return 0


def source_detail(h: SourceHealth) -> str:
    """The URL polled (and why it is not the configured one), then the last error."""
    detail = escape(h.effective_url or h.url)
    if h.effective_url and h.url_reason:
        detail += f"\n({escape(h.url_reason)})"
    if h.last_error:
        detail += f"\n[red]{escape(h.last_error)}[/red]"
    return detail


def source_history(app: App, name: str, out: Console) -> int:
    if name not in app.ctx.sources:
        raise ConfigError(f"unknown source: {name} (see `python run.py sources`)")
    with app.sessions() as s:
        polls = store.poll_history(s, name)
    table = Table(title=f"Recent polls of {name} (newest first)")
    for column in ("time", "status", "HTTP", "bytes", "seconds", "entries", "new", "updated", "unchanged"):
        table.add_column(column, overflow="fold")
    table.add_column("next due because / error", overflow="fold")
    for p in polls:
        why = escape(p.next_due_reason or "")
        if p.error:
            why = f"{why}\n[red]{escape(p.error)}[/red]".strip()
        table.add_row(
            when(p.at),
            p.status,
            str(p.http_status or ""),
            str(p.bytes),
            f"{p.duration:.2f}",
            str(p.entries),
            str(p.new),
            str(p.updated),
            str(p.unchanged),
            why,
        )
    out.print(table if polls else f"no polls of {name} recorded yet")
    return 0


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def cmd_topics(args: argparse.Namespace, out: Console) -> int:
    app = open_app(load(args))
    if args.test is not None:
        return test_query(app, args.test, out)
    with app.sessions() as s:
        stats = store.topic_stats(s)
    table = Table(title="Topics")
    for column in ("topic", "title", "items", "last match", "query"):
        table.add_column(column, overflow="fold")
    for t in app.settings.topics:
        st = stats.get(t.name)
        table.add_row(
            t.name, t.title or "", str(st.count if st else 0), when(st.last_match if st else None), t.query
        )
    out.print(table)
    return 0


def test_query(app: App, text: str, out: Console) -> int:
    try:
        query = compile_query(text)
    except ValueError as e:
        raise ConfigError(f"query {text!r}: {e}") from e
    hits: list[StoredItem] = []
    total = 0
    at = now()  # relative dates (published:>7d) count back from now
    with app.sessions() as s:
        for stored in store.stored_items(s):
            source = app.ctx.sources.get(stored.item.source)
            if query.matches(MatchDoc.from_item(stored.item, source.tags if source else (), at)):
                total += 1
                hits.append(stored)
    hits.sort(key=lambda x: x.item.published, reverse=True)
    table = Table(title=f"{total} stored items match {text!r} (newest {min(total, 20)} shown)")
    for column in ("published", "source", "title"):
        table.add_column(column, overflow="fold")
    for stored in hits[:20]:
        table.add_row(when(stored.item.published), stored.item.source, stored.item.title)
    out.print(table)
    return 0


def cmd_build(args: argparse.Namespace, out: Console) -> int:
    from aggregator import publish  # feedgen: only the commands that build or serve feeds load it

    app = open_app(load(args))
    base = (args.base_url or app.settings.server.base_url).rstrip("/")
    folder = Path(args.out) / "topics"
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    with app.sessions() as s:
        stats = store.topic_stats(s)
        for topic in app.settings.topics:
            items = store.topic_items(s, topic.name, limit=topic.limit, collapse=topic.collapse)
            st = stats.get(topic.name)
            for fmt in publish.FORMATS:
                body = publish.render_feed(
                    fmt,
                    topic,
                    items,
                    feed_url=f"{base}/topics/{topic.name}.{fmt}",
                    site_url=f"{base}/topics/{topic.name}",
                    updated=st.last_change if st else None,
                )
                write_atomically(folder / f"{topic.name}.{fmt}", body)  # a server never serves half of it
                written += 1
    out.print(f"wrote {written} feed files for {len(app.settings.topics)} topics under {folder}")
    return 0


def cmd_export(args: argparse.Namespace, out: Console) -> int:
    app = open_app(load(args))
    with open_output(args.out) as stream, app.sessions() as s:
        count = 0
        for stored in store.stored_items(s):
            stream.write(json.dumps(export_record(stored), ensure_ascii=False) + "\n")
            count += 1
        stream.flush()  # a reader that left (`export | head`) is noticed here, not at interpreter exit
    if args.out:
        out.print(f"exported {count} items to {args.out}")
    return 0


def write_atomically(
    path: Path, data: bytes, check: Callable[[Path], object] | None = None, *, keep: bool = True
) -> None:
    """Write ``data`` to a temporary file beside ``path``, run ``check`` on it, then rename it over
    ``path``, so that a reader sees the old file or the new one, never part of it. The new file has the
    old one's permissions, or (a new file) those ``open(path, "w")`` would give. When writing fails,
    ``check`` raises or ``keep`` is false (a dry run), ``path`` is left as it was and the temporary file
    removed; an OSError comes out as an AggregatorError naming the file."""
    target = path.resolve()  # a symlinked config: write its target, keep the link
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "xb") as stream:  # mode 0o666 less the umask, as for any new file
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        if check is not None:
            check(tmp)
        if keep:
            os.replace(tmp, target)
    except OSError as e:
        raise AggregatorError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def open_output(path: str | None) -> Iterator[TextIO]:
    if not path or path == "-":
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as stream:
        yield stream


def export_record(stored: StoredItem) -> dict[str, Any]:
    item = stored.item
    return {
        "id": item.uid,
        "source": item.source,
        "url": item.url,
        "link": item.link,
        "title": item.title,
        "text": item.text,
        "html": item.html,
        "published": item.published.isoformat(),
        "updated": item.updated.isoformat() if item.updated else None,
        "first_seen": stored.first_seen.isoformat(),
        "language": item.language,
        "authors": list(item.authors),
        "categories": list(item.categories),
        "enclosures": [{"url": e.url, "type": e.type, "length": e.length} for e in item.enclosures],
        "image": item.image,
        "article_id": stored.article_id,
        "story_id": stored.story_id,
        "flags": list(item.flags),
    }


def cmd_explain(args: argparse.Namespace, out: Console) -> int:
    """Why an item is where it is: identity key, article and story, the merge decisions, topics."""
    app = open_app(load(args))
    with app.sessions() as s:
        found = store.explain_item(s, args.item)
        if found is None:
            raise AggregatorError(
                f"explain: no stored item has the id {args.item!r} "
                "(give the `id` that `export` and the feeds show, or the numeric row id)"
            )
        topics = sorted(store.item_topics(s, [found.item.id]).get(found.item.id, []))
    for line in explain_lines(found, topics):
        out.print(escape(line), highlight=False, soft_wrap=True)
    return 0


def explain_lines(x: store.Explanation, topics: Sequence[str]) -> list[str]:
    def name(m: store.Member) -> str:
        return f"item {m.id} ({m.source}: {m.title!r})"

    me = x.item
    lines = [
        f"{name(me)}",
        f"  uid {me.uid}; published {x.published.isoformat()}; first seen {x.first_seen.isoformat()}",
        f"  identity key in {me.source}: {x.key}",
        f"  article {x.article_id}: {len(x.article)} item(s) from "
        f"{', '.join(sorted({m.source for m in x.article}))}",
        f"  story {x.story_id}: {len(x.story)} item(s) from {', '.join(sorted({m.source for m in x.story}))}",
    ]
    lines.extend(f"    - {name(m)}" for m in x.story if m.id != me.id)
    lines.append("  decisions:" if x.merges else "  decisions: none (no item joined it, nor it another)")
    for m in x.merges:
        verb = "article" if m.level == "article" else "story"
        if m.item_id == me.id:
            other = x.named.get(m.other_id)
            who = name(other) if other else f"item {m.other_id}"
            lines.append(f"    joined the {verb} of {who}: rule {m.rule}, similarity {m.similarity:.2f}")
        else:
            other = x.named.get(m.item_id)
            who = name(other) if other else f"item {m.item_id}"
            lines.append(f"    {who} joined its {verb}: rule {m.rule}, similarity {m.similarity:.2f}")
    lines.append(f"  topics: {', '.join(topics) if topics else 'none'}")
    return lines


def cmd_opml_export(args: argparse.Namespace, out: Console) -> int:
    """The configured sources as OPML 2.0 on standard output (or ``--out FILE``); ``out`` is stderr."""
    from aggregator import opml

    settings = load(args)
    raw = opml.raw_sources(settings.path)
    sites, warnings = stored_sites(settings)
    body, more = opml.export_opml(
        settings.sources, raw, now(), f"aggregator sources ({settings.path.name})", sites
    )
    warnings += more
    for warning in warnings:
        out.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    if args.out and args.out != "-":
        write_atomically(Path(args.out), body)
        out.print(f"exported {len(settings.sources)} sources to {args.out}", highlight=False)
    else:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    return 0


def stored_sites(settings: Settings) -> tuple[dict[str, str], list[str]]:
    """The site link (OPML htmlUrl) of each source the store has polled, read without migrating or
    creating anything: none before the first poll, and a warning when the store cannot be read."""
    try:
        url = make_url(settings.database)
    except ArgumentError:
        return {}, []
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and not (database and Path(database).expanduser().is_file()):
        return {}, []
    try:
        engine = open_engine(settings)
        try:
            with store.make_sessionmaker(engine)() as s:
                return store.source_sites(s), []
        finally:
            engine.dispose()
    except (AggregatorError, SQLAlchemyError) as e:
        reason = str(e).splitlines()[0]
        return {}, [f"htmlUrl left out: cannot read the store {url.render_as_string()}: {reason}"]


def cmd_opml_import(args: argparse.Namespace, out: Console) -> int:
    """Add the feeds of an OPML file that the config lacks to its ``sources:``; all or nothing."""
    from aggregator import opml

    settings = load(args)  # the config as it is must load: its problems first (exit 2)
    doc = opml.parse_opml(opml.read_opml_file(args.file), args.file)
    plan = opml.plan_import(doc, settings.sources, keep_env=args.keep_env)
    out.print(import_table(plan, args.file))
    problems = len(plan.problems)
    if problems:
        raise ConfigError(
            f"{args.file}: {problems} problem{'s' * (problems != 1)}; nothing imported", list(plan.problems)
        )
    summary = f"{len(plan.added)} added, {len(plan.skipped)} skipped, 0 problems"
    if not plan.added:
        out.print(f"{summary}: {settings.path} is unchanged", highlight=False)
        return 0
    text = settings.path.read_bytes().decode("utf-8")  # as is: read_text would turn \r\n into \n
    new_text = opml.append_sources(text, [a.entry for a in plan.added])

    def check(candidate: Path) -> None:  # the same loader as check-config, on the file as it would be
        try:
            loaded = load_config(candidate, validate_query=compile_query)
        except ConfigError as e:
            lines = [p.replace(str(candidate), str(settings.path)) for p in e.problems]
            raise ConfigError(
                f"{settings.path}: the config would not load after the import; unchanged", lines
            ) from e
        missing = {a.entry["name"] for a in plan.added} - {s.name for s in loaded.sources}
        if missing:  # pragma: no cover - a safety net for the text edit
            raise ConfigError(f"{settings.path}: the edit lost sources {sorted(missing)}; unchanged")

    write_atomically(settings.path, new_text.encode("utf-8"), check, keep=not args.dry_run)
    if args.dry_run:
        out.print(f"dry run: {summary}; {settings.path} would get:", highlight=False)
        out.print(escape(opml.append_sources("sources:\n", [a.entry for a in plan.added])), highlight=False)
    else:
        out.print(f"{summary}: {settings.path} updated (check it with `check-config`)", highlight=False)
    return 0


def import_table(plan: ImportPlan, file: str) -> Table:
    table = Table(title=f"OPML import from {file}")
    for column in ("line", "outline", "result", "source", "tags", "url / note"):
        table.add_column(column, overflow="fold")
    for a in plan.added:
        entry = a.entry
        note = "\n".join([escape(entry["url"]), *(escape(n) for n in a.notes)])
        tags = ", ".join(entry.get("tags", []))
        table.add_row(
            str(a.feed.line), escape(a.feed.title or a.feed.text or ""), "added", entry["name"], tags, note
        )
    for feed, why in plan.skipped:
        table.add_row(
            str(feed.line),
            escape(feed.title or feed.text or ""),
            "skipped",
            "",
            "",
            escape(f"{feed.url}: {why}"),
        )
    for label, why in plan.ignored:
        table.add_row("-", escape(label), "ignored", "", "", escape(why))
    for problem in plan.problems:
        table.add_row("-", "", "[red]problem[/red]", "", "", escape(problem))
    return table


def cmd_db(args: argparse.Namespace, out: Console) -> int:
    settings = load(args)
    engine = open_engine(settings)
    before, head = store.schema_revision(engine)
    store.upgrade(engine)
    out.print(f"database {settings.database}: schema {before or 'empty'} -> {head}")
    return 0


def cmd_prune(args: argparse.Namespace, out: Console) -> int:
    """Delete items older than the retention (``retention: {days: N}`` or ``--days N``), each leaving a
    tombstone, and the tombstones of keys that no poll has seen for as long."""
    settings = load(args)
    days = args.days if args.days is not None else settings.retention.days
    if days is None:
        raise ConfigError(
            f"{settings.path}: retention.days: not set, so `prune` keeps everything: "
            "set `retention: {days: 90}` in the config or pass --days N"
        )
    app = open_app(settings)
    at = now()
    with app.sessions.begin() as s:
        result = store.prune_items(s, at - timedelta(days=days), at, dry_run=args.dry_run)
    if not args.dry_run:  # as a worker does: the fingerprints of items out of the matching window go
        store.prune_fingerprints(app.sessions, at, app.ctx.stories)
    verb, expire = ("would delete", "would expire") if args.dry_run else ("deleted", "expired")
    out.print(
        f"{verb} {result.items} items published and first seen more than {days} days ago; "
        f"{expire} {result.expired} tombstones of items no poll has seen for {days} days; "
        f"{result.tombstones} tombstones keep pruned items from coming back"
    )
    return 0


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of days >= 1, not {value!r}")
    return number


def _processes(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"expected a number of processes from 1 to 64, not {value!r}")
    return int(value)


def cmd_run(args: argparse.Namespace, out: Console) -> int:
    return _run_writer(load(args), out, with_web=True)


def cmd_worker(args: argparse.Namespace, out: Console) -> int:
    return _run_writer(load(args), out, with_web=False)


def _run_writer(settings: Settings, out: Console, *, with_web: bool) -> int:
    """``run`` / ``worker``: SQLite is migrated on start and held by one such process (a lock file);
    PostgreSQL, shared by many processes, must be migrated first with ``db upgrade``."""
    engine = open_engine(settings)
    if engine.dialect.name == "postgresql":
        store.ensure_current(engine, f"python run.py db upgrade --config {settings.path}")
    lock = store.WriterLock(engine)
    engine.dispose()
    try:
        app = open_app(settings)
        return serve_forever(app, out, with_worker=True, with_web=with_web)
    finally:
        lock.release()


def cmd_serve(args: argparse.Namespace, out: Console) -> int:
    settings = load(args)
    app = open_app(settings, migrate=False)
    processes = args.processes or settings.server.processes or len(os.sched_getaffinity(0))
    return serve_forever(app, out, with_worker=False, with_web=True, processes=processes)


def serve_forever(app: App, out: Console, *, with_worker: bool, with_web: bool, processes: int = 1) -> int:
    """Run the worker and/or the web server until SIGINT or SIGTERM; stop cleanly. The web server alone
    may run in ``processes`` forked processes sharing the listening socket."""
    from aggregator import httpd
    from aggregator.web import create_app, in_memory

    settings = app.settings
    stop = threading.Event()
    options = httpd.Options(threads=settings.server.threads)

    def make_app() -> tuple[Flask, httpd.Inline]:
        wsgi = create_app(
            settings.topics, app.sessions, settings.server.base_url, websub_hub=settings.websub_hub
        )
        return wsgi, in_memory(wsgi)

    sockets = _listen(settings) if with_web else []
    if with_web and not with_worker and processes > 1:
        app.engine.dispose()  # each web process opens its own connections
        announce(app, out, processes)
        return httpd.serve_processes(make_app, sockets, options, processes)
    server = None
    if with_web:
        wsgi, inline = make_app()
        server = httpd.Server(wsgi, sockets, options, inline)
    worker = make_worker(app) if with_worker else None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # only flag and wake the loop: the handler may run while the main thread holds waitress's
        # locks (stopping the server from here deadlocked `serve` under load)
        stop.set()
        if server is not None:
            server.wake()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if worker is not None:
            worker.start()
        if server is not None:
            announce(app, out)
            server.run_until(stop)
        else:
            out.print(f"worker polling {len(settings.sources)} sources; Ctrl-C to stop", highlight=False)
            stop.wait()
    finally:
        if worker is not None:
            worker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _listen(settings: Settings) -> list[socket.socket]:
    from aggregator import httpd

    try:
        return httpd.listen(settings.server.host, settings.server.port, httpd.Options().backlog)
    except OSError as e:
        raise AggregatorError(
            f"cannot listen on {settings.server.host}:{settings.server.port}: {e.strerror or e} "
            f"(change server.port in {settings.path})"
        ) from e


def make_worker(app: App) -> Worker:
    """The worker with the configured threads, tick, lease, batch and cross-worker per-host limit."""
    from aggregator.worker import Worker

    w = app.settings.worker
    lease = timedelta(seconds=w.lease)
    longest = max((s.timeout for s in app.settings.sources), default=0.0)
    if 2 * longest >= w.lease:  # a poll starts with at least half its lease to run
        log.warning(
            "worker.lease (%s) is not more than twice the longest source timeout (%.0f s): a slow poll "
            "may outlive its lease and be taken by another worker (%s)",
            lease,
            longest,
            app.settings.path,
        )
    days = app.settings.retention.days
    retention = timedelta(days=days) if days is not None else None
    return Worker(
        app.ctx,
        tick=w.tick,
        threads=w.threads,
        lease=lease,
        batch=w.batch,
        per_host=w.per_host,
        retention=retention,
    )


def announce(app: App, out: Console, processes: int = 1) -> None:
    base = app.settings.server.base_url.rstrip("/")
    out.print(
        f"aggregator {__version__}: serving {len(app.settings.topics)} topic feeds at {base}/"
        + (f" ({processes} processes)" if processes > 1 else ""),
        highlight=False,
    )
    for topic in app.settings.topics:
        out.print(f"  {topic.name}: {base}/topics/{topic.name}.rss  .atom  .json", highlight=False)
    out.print("Ctrl-C to stop", highlight=False)
    out.file.flush()


# --- argument parsing ----------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, Console], int]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"config file (default ${{AGGREGATOR_CONFIG}} or {DEFAULT_CONFIG})",
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more")
    parser = argparse.ArgumentParser(
        prog="aggregator",
        description="Poll news feeds; publish clean, deduplicated topic feeds.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"aggregator {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    add("run", cmd_run, "worker and web server in one process (the default)")
    add("worker", cmd_worker, "only the polling worker")
    p = add("serve", cmd_serve, "only the web server")
    p.add_argument(
        "--processes", type=_processes, metavar="N", help="web processes (default server.processes)"
    )
    p = add("fetch", cmd_fetch, "one polling pass over the due sources (or --all / --source), then exit")
    p.add_argument("--source", action="append", metavar="NAME", help="poll this source (repeatable)")
    p.add_argument("--all", action="store_true", help="poll every enabled source, due or not")
    add("check-config", cmd_check_config, "validate the config file; exit 2 listing every problem")
    p = add("sources", cmd_sources, "table of sources with their health")
    p.add_argument("--history", metavar="NAME", help="the recent polls of one source, newest first")
    p = add("topics", cmd_topics, "list topics with item counts, or try a query with --test")
    p.add_argument("--test", metavar="QUERY", help="show the stored items a query would match")
    p = add("build", cmd_build, "write every topic feed as static files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--base-url", help="public URL the files will be served under (default server.base_url)")
    p = add("export", cmd_export, "every stored item as JSON Lines")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    p = add("opml", cmd_opml_export, "sources in and out as OPML 2.0: `opml export`, `opml import FILE`")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    o = actions.add_parser("export", parents=[common], help="the configured sources as OPML 2.0")
    o.set_defaults(func=cmd_opml_export)
    o.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    o = actions.add_parser("import", parents=[common], help="add the feeds of an OPML file to sources:")
    o.set_defaults(func=cmd_opml_import)
    o.add_argument("file", metavar="FILE", help="the OPML file (- for standard input)")
    o.add_argument("--dry-run", action="store_true", help="show what would be added; write nothing")
    o.add_argument(
        "--keep-env",
        action="store_true",
        help="keep ${NAME} environment references (only for a file you trust, e.g. your own export)",
    )
    p = add("explain", cmd_explain, "why an item is where it is: identity, merges and their rule, topics")
    p.add_argument("item", metavar="ITEM_ID", help="the item's public id (as in export and feeds) or row id")
    p = add("db", cmd_db, "database maintenance: `db upgrade` applies the schema migrations")
    p.add_argument("action", choices=["upgrade"])
    p = add("prune", cmd_prune, "delete items older than the retention; tombstones keep them from returning")
    p.add_argument("--days", type=_positive_int, metavar="N", help="days to keep (default retention.days)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    verbose = getattr(args, "verbose", False)
    func: Command = getattr(args, "func", cmd_run)
    quiet = func in (cmd_check_config, cmd_sources, cmd_topics, cmd_export, cmd_build, cmd_db, cmd_fetch)
    quiet = quiet or func in (cmd_prune, cmd_explain, cmd_opml_export, cmd_opml_import)
    logging.basicConfig(
        level=logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # waitress warns "Task queue depth is N" on every request under load
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    to_stderr = func in (cmd_export, cmd_opml_export)
    stream = sys.stderr if to_stderr else sys.stdout
    out = Console(stderr=to_stderr, width=None if stream.isatty() else 200)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    try:
        return func(args, out)
    except ConfigError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except AggregatorError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `export | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
