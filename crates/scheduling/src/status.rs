//! Visit status transitions (a subset of R4 `Appointment.status`, appointmentstatus
//! value set): booked → arrived (check-in) → fulfilled; booked → noshow; booked or
//! arrived → cancelled. Everything else is refused with a reason.

/// The statuses a booked visit moves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisitStatus {
    Proposed,
    Pending,
    Booked,
    Arrived,
    Fulfilled,
    Cancelled,
    Noshow,
    EnteredInError,
    CheckedIn,
    Waitlist,
}

impl VisitStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "proposed" => VisitStatus::Proposed,
            "pending" => VisitStatus::Pending,
            "booked" => VisitStatus::Booked,
            "arrived" => VisitStatus::Arrived,
            "fulfilled" => VisitStatus::Fulfilled,
            "cancelled" => VisitStatus::Cancelled,
            "noshow" => VisitStatus::Noshow,
            "entered-in-error" => VisitStatus::EnteredInError,
            "checked-in" => VisitStatus::CheckedIn,
            "waitlist" => VisitStatus::Waitlist,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VisitStatus::Proposed => "proposed",
            VisitStatus::Pending => "pending",
            VisitStatus::Booked => "booked",
            VisitStatus::Arrived => "arrived",
            VisitStatus::Fulfilled => "fulfilled",
            VisitStatus::Cancelled => "cancelled",
            VisitStatus::Noshow => "noshow",
            VisitStatus::EnteredInError => "entered-in-error",
            VisitStatus::CheckedIn => "checked-in",
            VisitStatus::Waitlist => "waitlist",
        }
    }

    /// Whether the visit is over (no further transition).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            VisitStatus::Fulfilled
                | VisitStatus::Cancelled
                | VisitStatus::Noshow
                | VisitStatus::EnteredInError
        )
    }

    /// Check a transition; `Err` says why it is not allowed.
    pub fn transition(self, to: VisitStatus) -> Result<(), String> {
        use VisitStatus::*;
        let ok = matches!(
            (self, to),
            (Booked, Arrived)
                | (Booked, CheckedIn)
                | (CheckedIn, Arrived)
                | (Arrived, Fulfilled)
                | (CheckedIn, Fulfilled)
                | (Booked, Noshow)
                | (Booked, Cancelled)
                | (Arrived, Cancelled)
                | (CheckedIn, Cancelled)
        );
        if ok {
            Ok(())
        } else if self == to {
            Err(format!("the appointment is already {}", self.as_str()))
        } else if self.is_final() {
            Err(format!(
                "the appointment is {} and cannot become {}",
                self.as_str(),
                to.as_str()
            ))
        } else {
            Err(format!(
                "an appointment cannot go from {} to {} (booked → arrived → fulfilled; booked → noshow; booked/arrived → cancelled)",
                self.as_str(),
                to.as_str()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VisitStatus::*;
    use super::*;

    #[test]
    fn the_visit_lifecycle() {
        assert!(Booked.transition(Arrived).is_ok());
        assert!(Arrived.transition(Fulfilled).is_ok());
        assert!(Booked.transition(Noshow).is_ok());
        assert!(Booked.transition(Cancelled).is_ok());
        assert!(Booked.transition(Fulfilled).is_err());
        assert!(Noshow.transition(Arrived).is_err());
        assert!(Fulfilled
            .transition(Cancelled)
            .unwrap_err()
            .contains("fulfilled"));
        assert!(Cancelled
            .transition(Cancelled)
            .unwrap_err()
            .contains("already cancelled"));
        assert_eq!(VisitStatus::parse("noshow"), Some(Noshow));
        assert_eq!(VisitStatus::parse("done"), None);
    }
}
