from django.conf import settings


def test_plugin_app_installed():
    names = [getattr(a, "name", a) for a in settings.INSTALLED_APPS]
    assert "kolibri_sync_extras_plugin" in names
