"""The dashboard on the hostile-row corpus: every row is shown, nothing is read as markup,
no control character reaches the terminal, and deploying a release whose version is markup
neither crashes the app nor loses the task."""

from __future__ import annotations

import pytest

from tests.test_hostile_rows import RAW_CONTROLS, insert_corpus
from wrktalk_agent.tui.screens import TaskDetailScreen
from wrktalk_agent.tui.widgets import KeyedTable, Overview, ReleasesTable, TasksTable

pytestmark = pytest.mark.timeout(120)


def table_text(table: KeyedTable) -> str:
    return "\n".join(
        " | ".join(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count)
    )


def assert_safe(text: str) -> None:
    for raw in RAW_CONTROLS:
        assert raw not in text, f"{raw!r} shown raw"


@pytest.mark.parametrize("backend_schema", [False, True], ids=["project", "backend"])
async def test_dashboard_renders_the_hostile_corpus_and_deploys_a_markup_version(
    backend_schema: bool, repo, make_app, wait_for, is_loaded
) -> None:
    corpus = await insert_corpus(repo, backend_schema=backend_schema)
    app = make_app()
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await wait_for(pilot, is_loaded(app), "first refresh")
        tasks = table_text(app.main.query_one(TasksTable))
        assert len(app.main.query_one(TasksTable).rows) == len(corpus.tasks)
        assert "[/]oops[/bold]" in tasks and "\\x1b[2J" in tasks
        assert_safe(tasks)
        assert_safe(str(app.main.query_one(Overview).content))
        await pilot.press("2")
        await pilot.press("3")
        releases = app.main.query_one(ReleasesTable)
        assert_safe(table_text(releases))

        for task_id in corpus.tasks.values():
            screen = TaskDetailScreen(app.main.source, task_id, 60.0)
            await app.push_screen(screen)
            await wait_for(pilot, lambda s=screen: s.detail is not None, "detail")
            await pilot.pause()
            shown = [str(w.content) for w in screen.query("Static")]
            assert_safe("\n".join(shown) + table_text(screen.query_one("#timeline", KeyedTable)))
            app.pop_screen()
            await pilot.pause()

        # deploy the release whose version is markup: the app survives, the task is queued
        await pilot.press("3")
        releases.focus()
        releases.move_cursor(row=releases.get_row_index(str(corpus.hostile_release)))
        await pilot.pause()
        before = await repo.pool.fetchval("SELECT count(*) FROM agent_task")
        await pilot.press("d")
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: any("queued" in n.message for n in app._notifications),
            "the deploy notification",
        )
        await pilot.pause(0.3)
        assert app.is_running
        assert await repo.pool.fetchval("SELECT count(*) FROM agent_task") == before + 1
