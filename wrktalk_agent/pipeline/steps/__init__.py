"""The steps of a task, one job each; each is a function of the task's
:class:`~wrktalk_agent.pipeline.state.TaskState` that reads what earlier steps left there
and writes what later ones need. :mod:`wrktalk_agent.pipeline.run` drives them in order;
a recovery (:mod:`wrktalk_agent.recovery`) reuses the maintenance, live-release and
notification units.
"""
