"""The study report's building blocks: PNG line charts drawn with PIL (:mod:`~pipeline.report.charts`), the page,
its tables, images and inputs (:mod:`~pipeline.report.page`) and its sections, in page order
(:mod:`~pipeline.report.sections`); :mod:`pipeline.steps.report` assembles them into ``report/index.html``."""
