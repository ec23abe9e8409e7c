"""One pipeline run: crawl, wait for every stage, reconcile, report.

pipeline.py reads what each stage left behind (the crawl reports, topic windows, group and stored
offsets, rows); reconcile.py is the pure function from those counts to checks (it imports nothing
of the project); report.py renders a run; frontierjob.py drives ``crawlers.frontierrun``.
"""
