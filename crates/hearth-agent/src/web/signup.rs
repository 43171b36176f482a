//! The public sign-up and password-reset pages, and the emails they send, as pure functions:
//! the sign-up form (with an invite code field when the co-op asks for one), the pages a
//! link from an email opens (a button, so a mail scanner fetching the link uses nothing),
//! the new-password form, and a page that only says what happened. Links in emails start
//! with the co-op's `public_url`, never with the request's `Host`.

use hearth_types::signup::{SignupMode, SignupSettings};

use super::html::{escape, page};

fn problem_line(problem: Option<&str>) -> String {
    problem.map_or(String::new(), |p| {
        format!(
            "<p class=\"flash error\" role=\"alert\" id=\"flash\">{}</p>",
            escape(p)
        )
    })
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
        escape(value)
    )
}

/// What a sign-up form was filled with, shown again after a problem (never the password).
#[derive(Debug, Default, Clone)]
pub struct Filled<'a> {
    pub name: &'a str,
    pub email: &'a str,
    pub invite: &'a str,
}

/// `/signup`: the form, or why there is none.
pub fn signup_form(
    mode: SignupMode,
    csrf: &str,
    filled: &Filled<'_>,
    problem: Option<&str>,
) -> String {
    let body = match mode {
        SignupMode::Closed => "<h1>Sign up</h1><p id=\"closed\">Sign-up is closed: the co-op's admins create accounts. Ask them for one.</p>\
<p class=\"muted\"><a href=\"/login\">Log in</a></p>"
            .to_owned(),
        SignupMode::Invite | SignupMode::Approval => {
            let how = match mode {
                SignupMode::Invite => "You need an invite code from a member or an admin.",
                _ => "An admin approves each new account; you can log in once they have.",
            };
            let invite = match mode {
                SignupMode::Invite => format!(
                    "<label for=\"invite\">Invite code</label><input id=\"invite\" name=\"invite\" required autocomplete=\"off\" value=\"{}\">",
                    escape(filled.invite)
                ),
                _ => String::new(),
            };
            format!(
                "<h1>Sign up</h1>{problem}<p class=\"muted\">{how} We send a link to your email address to confirm it.</p>\
<form class=\"stack\" method=\"post\" action=\"/signup\">{csrf}\
<label for=\"name\">Account name</label><input id=\"name\" name=\"name\" autocomplete=\"username\" required pattern=\"[a-z0-9][a-z0-9-]*\" maxlength=\"63\" value=\"{name}\">\
<label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" required value=\"{email}\">\
<label for=\"password\">Password (at least 10 characters)</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required minlength=\"10\">\
{invite}<p><button id=\"signup\">Sign up</button></p></form>\
<p class=\"muted\"><a href=\"/login\">Log in</a></p>",
                problem = problem_line(problem),
                csrf = hidden("csrf", csrf),
                name = escape(filled.name),
                email = escape(filled.email),
            )
        }
    };
    page("Sign up · hearth", &body)
}

/// A page that says what happened (`id="done"`), with a link on.
pub fn message(title: &str, text: &str, link: (&str, &str)) -> String {
    page(
        &format!("{title} · hearth"),
        &format!(
            "<h1>{}</h1><p id=\"done\">{}</p><p><a href=\"{}\">{}</a></p>",
            escape(title),
            escape(text),
            escape(link.0),
            escape(link.1)
        ),
    )
}

/// `/verify?token=T`: one button that uses the token.
pub fn verify_form(token: &str, csrf: &str) -> String {
    page(
        "Confirm your email · hearth",
        &format!(
            "<h1>Confirm your email address</h1>\
<form method=\"post\" action=\"/verify\">{}{}<p><button id=\"confirm\">Confirm my address</button></p></form>",
            hidden("csrf", csrf),
            hidden("token", token)
        ),
    )
}

/// `/reset`: the form asking for a reset link.
pub fn reset_request_form(csrf: &str, problem: Option<&str>) -> String {
    page(
        "Reset your password · hearth",
        &format!(
            "<h1>Reset your password</h1>{}<p class=\"muted\">We send a link to the email address of the account; it works once, for an hour.</p>\
<form class=\"stack\" method=\"post\" action=\"/reset\">{}\
<label for=\"who\">Account name or email</label><input id=\"who\" name=\"who\" required autocomplete=\"username\">\
<p><button id=\"send-reset\">Send the link</button></p></form><p class=\"muted\"><a href=\"/login\">Log in</a></p>",
            problem_line(problem),
            hidden("csrf", csrf)
        ),
    )
}

/// `/reset/confirm?token=T`: the new password.
pub fn reset_confirm_form(token: &str, csrf: &str, problem: Option<&str>) -> String {
    page(
        "Choose a new password · hearth",
        &format!(
            "<h1>Choose a new password</h1>{}\
<form class=\"stack\" method=\"post\" action=\"/reset/confirm\">{}{}\
<label for=\"password\">New password (at least 10 characters)</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required minlength=\"10\">\
<p><button id=\"set-password\">Set the password</button></p></form>",
            problem_line(problem),
            hidden("csrf", csrf),
            hidden("token", token)
        ),
    )
}

/// The verification email: (subject, body).
pub fn verify_mail(settings: &SignupSettings, name: &str, token: &str) -> (String, String) {
    let link = settings.link(&format!("/verify?token={token}"));
    let after = match settings.mode {
        SignupMode::Approval => "Once you have, an admin approves your account and you can log in.",
        _ => "Then you can log in.",
    };
    (
        "Confirm your email address".into(),
        format!(
            "Hello {name},\n\nsomeone (we hope you) signed up for the account {name} with this address.\nOpen this link to confirm it (it works once, for 48 hours):\n\n{link}\n\n{after}\nIf it was not you, ignore this message: the account stays unusable.\n"
        ),
    )
}

/// The password reset email: (subject, body).
pub fn reset_mail(settings: &SignupSettings, name: &str, token: &str) -> (String, String) {
    let link = settings.link(&format!("/reset/confirm?token={token}"));
    (
        "Reset your password".into(),
        format!(
            "Hello {name},\n\nsomeone (we hope you) asked to reset the password of the account {name}.\nOpen this link to choose a new one (it works once, for an hour):\n\n{link}\n\nIf it was not you, ignore this message: your password stays as it is.\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_emails_use_the_public_url_and_forms_escape_what_was_typed() {
        let settings = SignupSettings {
            mode: SignupMode::Approval,
            public_url: "https://panel.coop.example/".into(),
            plan: None,
        };
        let (_, body) = verify_mail(&settings, "mia", "T0K");
        assert!(
            body.contains("https://panel.coop.example/verify?token=T0K\n"),
            "{body}"
        );
        assert!(body.contains("an admin approves"), "{body}");
        let (_, body) = reset_mail(&settings, "mia", "R1");
        assert!(
            body.contains("https://panel.coop.example/reset/confirm?token=R1\n"),
            "{body}"
        );
        let filled = Filled {
            name: "<b>",
            email: "\"x",
            invite: "",
        };
        let html = signup_form(SignupMode::Invite, "c", &filled, Some("<i>"));
        assert!(!html.contains("<b>") && !html.contains("<i>"), "{html}");
        assert!(html.contains("id=\"invite\""));
        let html = signup_form(SignupMode::Approval, "c", &filled, None);
        assert!(!html.contains("id=\"invite\""));
        assert!(signup_form(SignupMode::Closed, "c", &filled, None).contains("closed"));
    }
}
