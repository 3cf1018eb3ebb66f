"""
``kolibri manage sync_extras_release``: end every background stage and clear the
plugin's jobs, the step before ``kolibri plugin disable kolibri_sync_extras_plugin``
(which runs it too).
"""

from django.core.management.base import BaseCommand

from kolibri_sync_extras_plugin.admin.disable import release_background_stages


class Command(BaseCommand):
    help = (
        "End every sync stage held in the background as errored (its client stops "
        "and syncs again) and clear the plugin's jobs from Kolibri's job storage. "
        "Run it, with Kolibri stopped, before disabling the plugin."
    )

    def handle(self, *args, **options):
        ended, cleared = release_background_stages()
        self.stdout.write(
            "{} background stage(s) ended as errored, {} job(s) cleared".format(
                ended, cleared
            )
        )
