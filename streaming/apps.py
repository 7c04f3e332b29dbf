from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    verbose_name = "Streaming"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from portfolio.signals import portfolio_recomputed
        from streaming import events

        user_logged_out.connect(_close_sockets_of_ended_session, dispatch_uid="livefolio-logout")
        portfolio_recomputed.connect(
            events.portfolio_recomputed, dispatch_uid="livefolio-publish-recomputed"
        )


def _close_sockets_of_ended_session(sender, request, user, **kwargs) -> None:
    """Logging out closes the sockets opened with that session (code 4401), at once."""
    from streaming import events

    if user is not None and request.session.session_key:
        events.session_ended(user_id=user.id, session_key=request.session.session_key)
