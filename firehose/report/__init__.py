"""What a run shows while it runs and leaves behind: live counters merged across processes (live.py), the web
UI's Telemetry tab and chart page (webui.py), the headless progress line (progress.py), the --csv history
(history.py) and the --html report's telemetry section (html.py), all attached in one place (telemetry.py)."""
